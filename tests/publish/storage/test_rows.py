from __future__ import annotations

from book.fixed import parse_fixed
from book.snapshot import BookSnapshot
from publish.storage import BboRow, bbo_row_from_snapshot


def test_bbo_row_from_snapshot_takes_the_top_and_splits_the_instrument() -> None:
    snapshot = BookSnapshot(
        instrument="binance-usdm:BTC-USDT-PERP",
        seq=42,
        ts_event=1_700_000_000_000_000_000,
        ts_recv=1_700_000_000_001_000_000,
        ts_book=1_700_000_000_001_200_000,
        bid=parse_fixed("61737.63"),
        bid_qty=parse_fixed("0.00000001"),
        ask=parse_fixed("61737.64"),
        ask_qty=parse_fixed("3"),
        bids=((parse_fixed("61737.63"), parse_fixed("0.00000001")),),
        asks=((parse_fixed("61737.64"), parse_fixed("3")),),
    )
    assert bbo_row_from_snapshot(snapshot) == BboRow(
        ts_event=1_700_000_000_000_000_000,
        ts_recv=1_700_000_000_001_000_000,
        venue="binance-usdm",
        symbol="BTC-USDT-PERP",
        seq=42,
        bid_px=61_737_630_000_000_000,
        bid_qty=10_000,
        ask_px=61_737_640_000_000_000,
        ask_qty=3_000_000_000_000,
    )


def test_bbo_row_from_snapshot_keeps_an_empty_side_empty() -> None:
    snapshot = BookSnapshot(
        instrument="kraken:BTC-USD",
        seq=1,
        ts_event=0,
        ts_recv=5,
        ts_book=6,
        bid=None,
        bid_qty=None,
        ask=parse_fixed("100"),
        ask_qty=parse_fixed("2"),
    )
    assert bbo_row_from_snapshot(snapshot) == BboRow(
        ts_event=0,
        ts_recv=5,
        venue="kraken",
        symbol="BTC-USD",
        seq=1,
        bid_px=None,
        bid_qty=None,
        ask_px=100 * 10**12,
        ask_qty=2 * 10**12,
    )
