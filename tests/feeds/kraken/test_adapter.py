"""What the Kraken adapter sends and how it is configured."""

from __future__ import annotations

import orjson
import pytest

from feeds.kraken.adapter import (
    KNOWN_PRECISIONS,
    WS_V2,
    KrakenAdapter,
    canonical_symbol,
    native_symbol,
)
from feeds.kraken.checksum import Precision
from feeds.kraken.sync import KrakenBookSync
from feeds.symbols import SymbolMap

SYMBOLS = SymbolMap("kraken", {"BTC-USD": "BTC/USD", "ETH-USD": "ETH/USD", "ADA-EUR": "ADA/EUR"})
BTC, ETH, ADA = SYMBOLS.instruments()


def decoded(frames: list[str]) -> list[object]:
    return [orjson.loads(frame) for frame in frames]


def test_subscribes_to_instruments_then_books() -> None:
    adapter = KrakenAdapter(SYMBOLS, depth=25)
    assert adapter.stream_url([BTC, ETH]) == WS_V2
    assert decoded(adapter.subscribe_frames([BTC, ETH])) == [
        {"method": "subscribe", "params": {"channel": "instrument", "snapshot": True}, "req_id": 1},
        {
            "method": "subscribe",
            "params": {
                "channel": "book",
                "symbol": ["BTC/USD", "ETH/USD"],
                "depth": 25,
                "snapshot": True,
            },
            "req_id": 2,
        },
    ]


def test_without_learning_precision_only_books_are_subscribed() -> None:
    adapter = KrakenAdapter(SYMBOLS, learn_precision=False)
    assert decoded(adapter.subscribe_frames([ADA])) == [
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["ADA/EUR"], "depth": 10, "snapshot": True},
            "req_id": 1,
        }
    ]


def test_resubscribe_is_unsubscribe_then_subscribe_of_that_pair_only() -> None:
    adapter = KrakenAdapter(SYMBOLS)
    assert decoded(adapter.resubscribe_frames(ETH)) == [
        {
            "method": "unsubscribe",
            "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10},
            "req_id": 1,
        },
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10, "snapshot": True},
            "req_id": 2,
        },
    ]


def test_app_pings_number_their_requests() -> None:
    adapter = KrakenAdapter(SYMBOLS, ping_interval=7.5)
    assert adapter.app_ping_interval == 7.5
    assert adapter.silence_timeout == 3.0  # heartbeats every second
    assert decoded([adapter.app_ping_frame() or "", adapter.app_ping_frame() or ""]) == [
        {"method": "ping", "req_id": 1},
        {"method": "ping", "req_id": 2},
    ]


def test_precisions_configured_over_known_ones_and_shared_with_the_syncs() -> None:
    adapter = KrakenAdapter(SYMBOLS, precisions={"ADA-EUR": Precision(6, 8)})
    assert adapter.precisions.get(ADA) == Precision(6, 8)
    assert adapter.precisions.get(BTC) == KNOWN_PRECISIONS["BTC-USD"] == Precision(1, 8)
    sync = adapter.new_sync(ETH, capture_depth=3)
    assert isinstance(sync, KrakenBookSync)
    assert (sync.depth, sync.precisions, sync.book.capture_depth) == (10, adapter.precisions, 3)
    adapter.new_parser().parse(
        '{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":['
        '{"symbol":"ETH/USD","price_precision":3,"qty_precision":7}]}}'
    )
    assert sync.precisions.get(ETH) == Precision(3, 7)


def test_depth_must_be_one_kraken_offers() -> None:
    with pytest.raises(ValueError, match="depth"):
        KrakenAdapter(SYMBOLS, depth=20)


def test_symbol_spelling() -> None:
    assert canonical_symbol("BTC/USD") == "BTC-USD"
    assert native_symbol("BTC-USD") == "BTC/USD"
    for bad in ("BTCUSD", "/USD", "BTC/"):
        with pytest.raises(ValueError, match="Kraken pair"):
            canonical_symbol(bad)
    for bad in ("BTCUSD", "BTC-USD-PERP", "-USD"):
        with pytest.raises(ValueError, match="spot symbol"):
            native_symbol(bad)
