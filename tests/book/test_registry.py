"""book.registry.BookRegistry: latest snapshots, statuses, NBBO and listeners."""

from __future__ import annotations

import logging

import pytest

from book.consolidated import ConsolidatedBbo
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus

LIVE = InstrumentState.LIVE
STALE = InstrumentState.STALE
SYNCING = InstrumentState.SYNCING


def snap(
    instrument: str,
    seq: int,
    bid: int | None,
    bid_qty: int | None,
    ask: int | None,
    ask_qty: int | None,
    *,
    ts: int = 0,
) -> BookSnapshot:
    return BookSnapshot(instrument, seq, ts, ts, ts, bid, bid_qty, ask, ask_qty)


def status(
    instrument: str, state: InstrumentState, reason: str = "synced", ts: int = 0
) -> InstrumentStatus:
    return InstrumentStatus(instrument, state, reason, ts)


def live_registry(*instruments: str) -> BookRegistry:
    registry = BookRegistry()
    for instrument in instruments:
        registry.set_status(status(instrument, LIVE))
    return registry


def record_nbbo(registry: BookRegistry) -> list[ConsolidatedBbo]:
    quotes: list[ConsolidatedBbo] = []
    registry.on_nbbo(quotes.append)
    return quotes


# -- snapshots and listeners ---------------------------------------------------------


def test_publish_makes_the_latest_and_tells_listeners_with_the_previous() -> None:
    registry = BookRegistry()
    calls: list[tuple[BookSnapshot, BookSnapshot | None]] = []
    registry.on_snapshot(lambda current, previous: calls.append((current, previous)))
    first = snap("binance:BTC-USDT", 1, 100, 1, 101, 1)
    second = snap("binance:BTC-USDT", 2, 100, 2, 101, 1)
    other = snap("okx:BTC-USDT", 1, 99, 1, 102, 1)
    assert registry.get("binance:BTC-USDT") is None
    registry.publish(first)
    registry.publish(other)
    registry.publish(second)
    assert registry.get("binance:BTC-USDT") == second
    assert registry.get("okx:BTC-USDT") == other
    assert calls == [(first, None), (other, None), (second, first)]


def test_listeners_run_in_registration_order() -> None:
    registry = BookRegistry()
    order: list[str] = []
    registry.on_snapshot(lambda *_: order.append("first"))
    registry.on_snapshot(lambda *_: order.append("second"))
    registry.publish(snap("binance:BTC-USDT", 1, 100, 1, 101, 1))
    assert order == ["first", "second"]


def test_a_raising_listener_is_counted_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = BookRegistry()
    snapshots: list[BookSnapshot] = []
    statuses: list[InstrumentStatus] = []

    def broken(*_: object) -> None:
        raise RuntimeError("listener bug")

    registry.on_snapshot(broken)
    registry.on_snapshot(lambda current, _: snapshots.append(current))
    registry.on_status(broken)
    registry.on_status(statuses.append)
    registry.on_nbbo(broken)
    quotes = record_nbbo(registry)

    live = status("binance:BTC-USDT", LIVE)
    book = snap("binance:BTC-USDT", 1, 100, 1, 101, 1, ts=5)
    with caplog.at_level(logging.ERROR, logger="book.registry"):
        registry.set_status(live)
        registry.publish(book)

    assert statuses == [live]
    assert snapshots == [book]
    assert quotes == [ConsolidatedBbo("BTC-USDT", 1, 5, 5, 100, 1, "binance", 101, 1, "binance")]
    assert registry.listener_errors == 3
    assert [
        (record.getMessage().startswith("book listener"), repr(record.exc_info[1]))
        for record in caplog.records
        if record.exc_info
    ] == [(True, "RuntimeError('listener bug')")] * 3


# -- statuses ----------------------------------------------------------------------------


def test_add_instrument_starts_syncing_once() -> None:
    registry = BookRegistry()
    registry.add_instrument("okx:BTC-USDT", ts=7)
    registry.add_instrument("binance:ETH-USDT", ts=8)
    registry.add_instrument("okx:BTC-USDT", ts=9)
    assert registry.statuses() == [
        InstrumentStatus("binance:ETH-USDT", SYNCING, "starting", 8),
        InstrumentStatus("okx:BTC-USDT", SYNCING, "starting", 7),
    ]
    assert registry.instruments() == ["binance:ETH-USDT", "okx:BTC-USDT"]
    assert registry.symbols() == ["BTC-USDT", "ETH-USDT"]
    assert registry.status("okx:BTC-USDT") == InstrumentStatus(
        "okx:BTC-USDT", SYNCING, "starting", 7
    )
    assert registry.status("kraken:BTC-USD") is None
    assert not registry.is_live("okx:BTC-USDT")


def test_set_status_tells_listeners_only_when_state_or_reason_changes() -> None:
    registry = BookRegistry()
    registry.add_instrument("okx:BTC-USDT")
    seen: list[InstrumentStatus] = []
    registry.on_status(seen.append)
    changes = [
        status("okx:BTC-USDT", LIVE, "synced", 1),
        status("okx:BTC-USDT", LIVE, "synced", 2),  # duplicate: ignored
        status("okx:BTC-USDT", STALE, "sequence gap", 3),
        status("okx:BTC-USDT", STALE, "checksum", 4),  # same state, new reason
        status("okx:BTC-USDT", STALE, "checksum", 5),  # duplicate: ignored
        status("okx:BTC-USDT", LIVE, "synced", 6),
    ]
    for change in changes:
        registry.set_status(change)
    assert seen == [changes[0], changes[2], changes[3], changes[5]]
    assert registry.status("okx:BTC-USDT") == changes[5]
    assert registry.is_live("okx:BTC-USDT")


def test_set_status_of_an_unknown_instrument_registers_it() -> None:
    registry = BookRegistry()
    registry.set_status(status("kraken:BTC-USD", STALE, "silence", 3))
    registry.add_instrument("kraken:BTC-USD", ts=4)  # already known: no reset to syncing
    assert registry.statuses() == [InstrumentStatus("kraken:BTC-USD", STALE, "silence", 3)]
    assert registry.symbols() == ["BTC-USD"]


def test_live_snapshot_only_while_live() -> None:
    registry = BookRegistry()
    registry.add_instrument("binance:BTC-USDT")
    book = snap("binance:BTC-USDT", 1, 100, 1, 101, 1)
    registry.publish(book)
    assert registry.live_snapshot("binance:BTC-USDT") is None
    registry.set_status(status("binance:BTC-USDT", LIVE))
    assert registry.live_snapshot("binance:BTC-USDT") == book
    registry.set_status(status("binance:BTC-USDT", STALE, "sequence gap"))
    assert registry.live_snapshot("binance:BTC-USDT") is None
    assert registry.get("binance:BTC-USDT") == book
    assert registry.live_snapshot("okx:BTC-USDT") is None


# -- NBBO ----------------------------------------------------------------------------------


def test_nbbo_follows_top_changes_of_live_books() -> None:
    registry = live_registry("binance:BTC-USDT", "okx:BTC-USDT")
    quotes = record_nbbo(registry)
    registry.publish(snap("binance:BTC-USDT", 1, 100, 1, 103, 1, ts=10))
    registry.publish(snap("okx:BTC-USDT", 1, 101, 2, 104, 1, ts=11))
    registry.publish(snap("binance:BTC-USDT", 2, 100, 1, 102, 3, ts=12))
    assert quotes == [
        ConsolidatedBbo("BTC-USDT", 1, 10, 10, 100, 1, "binance", 103, 1, "binance"),
        ConsolidatedBbo("BTC-USDT", 2, 11, 11, 101, 2, "okx", 103, 1, "binance"),
        ConsolidatedBbo("BTC-USDT", 3, 12, 12, 101, 2, "okx", 102, 3, "binance"),
    ]
    assert registry.nbbo("BTC-USDT") == quotes[-1]
    assert registry.nbbo("ETH-USDT") is None


def test_nbbo_unchanged_when_the_top_is_unchanged() -> None:
    registry = live_registry("binance:BTC-USDT", "okx:BTC-USDT")
    registry.publish(snap("binance:BTC-USDT", 1, 100, 1, 103, 1, ts=10))
    registry.publish(snap("okx:BTC-USDT", 1, 99, 1, 104, 1, ts=11))
    before = registry.nbbo("BTC-USDT")
    quotes = record_nbbo(registry)
    registry.publish(snap("binance:BTC-USDT", 2, 100, 1, 103, 1, ts=20))  # same top
    registry.publish(snap("okx:BTC-USDT", 2, 99, 5, 104, 1, ts=21))  # top changed, not best
    assert quotes == []
    assert registry.nbbo("BTC-USDT") is before


def test_nbbo_leaves_out_books_that_are_not_live() -> None:
    registry = live_registry("binance:BTC-USDT")
    registry.add_instrument("okx:BTC-USDT")
    quotes = record_nbbo(registry)
    registry.publish(snap("binance:BTC-USDT", 1, 100, 1, 103, 1, ts=10))
    registry.publish(snap("okx:BTC-USDT", 1, 101, 2, 102, 2, ts=11))  # better, but syncing
    registry.set_status(status("okx:BTC-USDT", LIVE))
    registry.set_status(status("binance:BTC-USDT", STALE, "checksum"))
    registry.set_status(status("okx:BTC-USDT", STALE, "silence"))
    assert quotes == [
        ConsolidatedBbo("BTC-USDT", 1, 10, 10, 100, 1, "binance", 103, 1, "binance"),
        ConsolidatedBbo("BTC-USDT", 2, 11, 11, 101, 2, "okx", 102, 2, "okx"),
        ConsolidatedBbo("BTC-USDT", 3, 0, 0, None, None, None, None, None, None),
    ]


def test_no_nbbo_before_any_live_quote() -> None:
    registry = BookRegistry()
    quotes = record_nbbo(registry)
    registry.add_instrument("binance:BTC-USDT")
    registry.set_status(status("binance:BTC-USDT", SYNCING, "connecting"))
    registry.set_status(status("binance:BTC-USDT", LIVE))  # live, but no book yet
    registry.publish(snap("okx:BTC-USDT", 1, 100, 1, 101, 1))  # never declared: not live
    assert quotes == []
    assert registry.nbbo("BTC-USDT") is None


def test_nbbo_is_per_canonical_symbol() -> None:
    registry = live_registry("binance:BTC-USDT", "binance-usdm:BTC-USDT-PERP", "okx:ETH-USDT")
    quotes = record_nbbo(registry)
    registry.publish(snap("binance:BTC-USDT", 1, 100, 1, 101, 1, ts=1))
    registry.publish(snap("binance-usdm:BTC-USDT-PERP", 1, 200, 1, 201, 1, ts=2))
    registry.publish(snap("okx:ETH-USDT", 1, 5, 1, 6, 1, ts=3))
    assert quotes == [
        ConsolidatedBbo("BTC-USDT", 1, 1, 1, 100, 1, "binance", 101, 1, "binance"),
        ConsolidatedBbo("BTC-USDT-PERP", 1, 2, 2, 200, 1, "binance-usdm", 201, 1, "binance-usdm"),
        ConsolidatedBbo("ETH-USDT", 1, 3, 3, 5, 1, "okx", 6, 1, "okx"),
    ]
    assert registry.symbols() == ["BTC-USDT", "BTC-USDT-PERP", "ETH-USDT"]
