"""The venue-neutral synthetic book: invariants, determinism, diffs, coalescing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from book.fixed import parse_fixed
from feeds.simulator.market import BookDiff, DepthSnapshot, DiffWindow, SimSymbol, SimulatedBook

BTC = SimSymbol(
    "BTCUSDT", price="61800.00", tick="0.01", lot="0.00001", mean_qty="0.25", max_gap_ticks=40
)
DUST = SimSymbol("DUSTUSDT", price="0.0005", tick="0.0001", lot="1", mean_qty="100")
"""Five ticks above zero: the bid side cannot hold its ``levels`` levels."""


def _apply(bids: dict[int, int], asks: dict[int, int], diff: BookDiff) -> None:
    for side, levels in ((bids, diff.bids), (asks, diff.asks)):
        for price, qty in levels:
            if qty:
                side[price] = qty
            else:
                side.pop(price, None)


def _snapshot(update_id: int, bids: dict[int, int], asks: dict[int, int]) -> DepthSnapshot:
    return DepthSnapshot(
        update_id, tuple(sorted(bids.items(), reverse=True)), tuple(sorted(asks.items()))
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("symbol", ""),
        ("price", "61800.005"),
        ("price", "0"),
        ("tick", "0"),
        ("lot", "-1"),
        ("mean_qty", "0.000001"),
        ("max_gap_ticks", 0),
        ("price_decimals", 1),
        ("qty_decimals", 13),
    ],
)
def test_sim_symbol_rejects_invalid_values(field: str, value: object) -> None:
    fields = {
        "symbol": "BTCUSDT",
        "price": "61800.00",
        "tick": "0.01",
        "lot": "0.00001",
        "mean_qty": "0.25",
        "max_gap_ticks": 3,
        "price_decimals": 8,
        "qty_decimals": 8,
    }
    fields[field] = value
    with pytest.raises(ValueError):
        SimSymbol(**fields)  # type: ignore[arg-type]


def test_initial_book_is_a_full_uncrossed_ladder_at_the_start_price() -> None:
    book = SimulatedBook(BTC, levels=25, seed=3, first_update_id=1000)
    book._check()
    snapshot = book.snapshot()
    assert snapshot.update_id == 1000
    assert len(snapshot.bids) == len(snapshot.asks) == 25
    assert snapshot.bids[0][0] == parse_fixed("61800.00")
    assert snapshot.bids[0][0] < snapshot.asks[0][0] <= parse_fixed("61800.02")
    assert book.best() == (snapshot.bids[0], snapshot.asks[0])
    assert book.snapshot(5) == DepthSnapshot(1000, snapshot.bids[:5], snapshot.asks[:5])


def test_same_seed_same_market_other_seed_other_market() -> None:
    def run(seed: int) -> list[BookDiff]:
        book = SimulatedBook(BTC, levels=20, seed=seed)
        return [book.step() for _ in range(200)]

    assert run(11) == run(11)
    assert run(11) != run(12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), levels=st.integers(1, 40))
def test_diffs_replayed_on_the_start_book_reproduce_every_step(seed: int, levels: int) -> None:
    book = SimulatedBook(BTC, levels=levels, seed=seed)
    start = book.snapshot()
    bids, asks = dict(start.bids), dict(start.asks)
    tick, lot = parse_fixed(BTC.tick), parse_fixed(BTC.lot)
    last = start.update_id
    for _ in range(150):
        diff = book.step()
        assert diff.first_update_id == last + 1
        assert diff.last_update_id >= diff.first_update_id
        changes = len(diff.bids) + len(diff.asks)
        assert 1 <= changes <= diff.last_update_id - diff.first_update_id + 1
        assert list(diff.bids) == sorted(diff.bids, reverse=True)
        assert list(diff.asks) == sorted(diff.asks)
        assert all(px % tick == 0 and qty % lot == 0 for px, qty in diff.bids + diff.asks)
        _apply(bids, asks, diff)
        last = diff.last_update_id
        assert book.update_id == last
        assert _snapshot(last, bids, asks) == book.snapshot()
        book._check()


def test_bid_side_stops_at_the_first_tick_above_zero() -> None:
    book = SimulatedBook(DUST, levels=10, seed=5)
    for _ in range(500):
        book.step()
        book._check()
        snapshot = book.snapshot()
        assert snapshot.bids[-1][0] >= parse_fixed(DUST.tick)
        assert len(snapshot.asks) == 10


def test_coalesced_window_bridges_from_any_update_id_inside_it() -> None:
    book = SimulatedBook(BTC, levels=30, seed=8)
    before = book.snapshot()
    window = DiffWindow()
    snapshots = [before]
    for _ in range(12):
        window.add(book.step())
        snapshots.append(book.snapshot())
    coalesced = window.take()
    assert coalesced is not None
    assert coalesced.first_update_id == before.update_id + 1
    assert coalesced.last_update_id == book.update_id
    # Binance: a snapshot at lastUpdateId in [U-1, u] plus the message gives the book at u.
    for snapshot in snapshots:
        bids, asks = dict(snapshot.bids), dict(snapshot.asks)
        _apply(bids, asks, coalesced)
        assert _snapshot(coalesced.last_update_id, bids, asks) == book.snapshot()
    assert window.take() is None
    window.add(book.step())
    following = window.take()
    assert following is not None
    assert following.first_update_id == coalesced.last_update_id + 1


def test_book_rejects_zero_levels() -> None:
    with pytest.raises(ValueError):
        SimulatedBook(BTC, levels=0)
