"""Bybit v5 parser, sync and adapter on messages in the documented format.

Shapes from bybit-exchange.github.io/docs/v5/ws/connect and .../v5/websocket/public/
orderbook: snapshot/delta with per-topic ``u``, ``u`` = 1 after a service restart.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from book.fixed import parse_fixed
from feeds.bybit.adapter import BybitAdapter, BybitCategory
from feeds.bybit.parser import BybitParser
from feeds.bybit.sync import BybitBookSync
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ControlEvent,
    HeartbeatEvent,
    IgnoredEvent,
    MalformedEvent,
    VenueErrorEvent,
)
from feeds.symbols import SymbolMap
from feeds.sync import NOTHING, ProblemKind, SyncProblem, SyncResult
from feeds.venue import IdleProbe

SPOT = SymbolMap("bybit", {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"})
LINEAR = SymbolMap("bybit-linear", {"BTC-USDT-PERP": "BTCUSDT"})
BTC = "bybit:BTC-USDT"
TS_MS, CTS_MS = 1_672_304_484_978, 1_672_304_484_976


def fx(text: str) -> int:
    return parse_fixed(text)


def book_message(
    kind: str,
    u: int,
    bids: list[list[str]],
    asks: list[list[str]],
    *,
    symbol: str = "BTCUSDT",
    cts: bool = True,
) -> str:
    message: dict[str, Any] = {
        "topic": f"orderbook.50.{symbol}",
        "type": kind,
        "ts": TS_MS,
        "data": {"s": symbol, "b": bids, "a": asks, "u": u, "seq": 7_961_638_724 + u},
    }
    if cts:
        message["cts"] = CTS_MS
    return orjson.dumps(message).decode()


SNAPSHOT = book_message(
    "snapshot",
    18_521_288,
    [["16493.50", "0.006"], ["16493.00", "0.100"]],
    [["16611.00", "0.029"], ["16612.00", "0.213"]],
)


def test_snapshot_and_delta_become_book_events_with_exact_levels() -> None:
    parser = BybitParser(SPOT)
    assert parser.parse(SNAPSHOT) == [
        BookSnapshotEvent(
            BTC,
            ((fx("16493.50"), fx("0.006")), (fx("16493.00"), fx("0.1"))),
            ((fx("16611.00"), fx("0.029")), (fx("16612.00"), fx("0.213"))),
            update_id=18_521_288,
            ts_event=CTS_MS * 1_000_000,
        )
    ]
    delta = book_message("delta", 18_521_289, [["16493.50", "0"]], [["16611.50", "0.4"]])
    assert parser.parse(delta.encode()) == [
        BookDeltaEvent(
            BTC,
            ((fx("16493.50"), 0),),
            ((fx("16611.50"), fx("0.4")),),
            first_id=18_521_289,
            last_id=18_521_289,
            ts_event=CTS_MS * 1_000_000,
        )
    ]
    (no_cts,) = parser.parse(book_message("delta", 5, [], [], cts=False))
    assert isinstance(no_cts, BookDeltaEvent) and no_cts.ts_event == TS_MS * 1_000_000


def test_a_message_with_u_1_is_a_whole_book_whatever_its_type() -> None:
    (event,) = BybitParser(SPOT).parse(book_message("delta", 1, [["100", "1"]], [["101", "2"]]))
    assert event == BookSnapshotEvent(
        BTC, ((fx("100"), fx("1")),), ((fx("101"), fx("2")),), update_id=1, ts_event=CTS_MS * 10**6
    )


@pytest.mark.parametrize(
    ("reply", "event"),
    [
        (  # spot
            {
                "success": True,
                "ret_msg": "subscribe",
                "conn_id": "2324d924",
                "req_id": "10001",
                "op": "subscribe",
            },
            ControlEvent("subscribe ok (conn_id 2324d924)"),
        ),
        (  # linear
            {
                "success": True,
                "ret_msg": "",
                "op": "subscribe",
                "conn_id": "cejreassvfrsfvb9v1a0-2m",
            },
            ControlEvent("subscribe ok (conn_id cejreassvfrsfvb9v1a0-2m)"),
        ),
        (
            {"success": True, "ret_msg": "", "conn_id": "c", "req_id": "", "op": "unsubscribe"},
            ControlEvent("unsubscribe ok (conn_id c)"),
        ),
        (  # spot pong
            {"success": True, "ret_msg": "pong", "conn_id": "0970e817", "op": "ping"},
            HeartbeatEvent(),
        ),
        (  # linear pong
            {"success": True, "ret_msg": "pong", "conn_id": "465772b1", "req_id": "", "op": "ping"},
            HeartbeatEvent(),
        ),
        (  # private-style pong
            {"req_id": "test", "op": "pong", "args": ["1675418560633"], "conn_id": "cfcb4ocsv"},
            HeartbeatEvent(),
        ),
        (
            {
                "success": False,
                "ret_msg": "Invalid symbol :[orderbook.50.BTCUSDX]",
                "conn_id": "c",
                "req_id": "",
                "op": "subscribe",
            },
            VenueErrorEvent("Bybit subscribe failed: Invalid symbol :[orderbook.50.BTCUSDX]"),
        ),
    ],
)
def test_replies(reply: dict[str, Any], event: object) -> None:
    assert BybitParser(SPOT).parse(orjson.dumps(reply)) == [event]


def test_other_topics_and_other_symbols_are_ignored() -> None:
    trade = {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": TS_MS, "data": []}
    parser = BybitParser(SPOT)
    assert parser.parse(orjson.dumps(trade)) == [IgnoredEvent()]
    assert parser.parse(book_message("delta", 9, [], [], symbol="SOLUSDT")) == [IgnoredEvent()]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":16723', "invalid JSON"),
        ('"pong"', "frame is not a JSON object"),
        ('{"hello":"world"}', "neither a topic message nor a reply"),
        ('{"op":"subscribe"}', "KeyError('success')"),
        (SNAPSHOT.replace('"snapshot"', '"partial"'), "unknown orderbook message type"),
        (SNAPSHOT.replace('"u":18521288', '"u":"18521288"'), "u is not an integer"),
        (SNAPSHOT.replace('"16493.50"', '"16,493.50"'), "ValueError"),
        (SNAPSHOT.replace('"ts":1672304484978,', "").replace(',"cts":1672304484976', ""), "'ts'"),
    ],
)
def test_malformed_frames_are_reported_not_raised(frame: str, reason: str) -> None:
    (event,) = BybitParser(SPOT).parse(frame)
    assert isinstance(event, MalformedEvent)
    assert reason in event.reason
    assert event.raw == frame


def _apply(sync: BybitBookSync, parser: BybitParser, frame: str) -> SyncResult:
    (event,) = parser.parse(frame)
    if isinstance(event, BookSnapshotEvent):
        return sync.on_snapshot(event, 0)
    assert isinstance(event, BookDeltaEvent)
    return sync.on_delta(event, 0)


def _levels(sync: BybitBookSync) -> tuple[object, object]:
    return sync.book.top_bids(10), sync.book.top_asks(10)


def test_sync_needs_a_snapshot_then_contiguous_u() -> None:
    parser, sync = BybitParser(SPOT), BybitBookSync(BTC, capture_depth=10)
    early = book_message("delta", 18_521_287, [["16000", "1"]], [])
    assert _apply(sync, parser, early) is NOTHING  # before any snapshot
    result = _apply(sync, parser, SNAPSHOT)
    assert result.snapshot is not None and sync.live and sync.last_update_id == 18_521_288
    delta = book_message("delta", 18_521_289, [["16493.50", "0"], ["16493.00", "0.5"]], [])
    result = _apply(sync, parser, delta)
    assert result.snapshot is not None
    assert result.snapshot.bids == ((fx("16493.00"), fx("0.5")),)
    assert result.snapshot.asks == ((fx("16611.00"), fx("0.029")), (fx("16612.00"), fx("0.213")))
    assert result.snapshot.ts_event == CTS_MS * 1_000_000
    skipped = book_message("delta", 18_521_291, [["16493.00", "0.7"]], [])
    assert _apply(sync, parser, skipped) == SyncResult(
        problem=SyncProblem(ProblemKind.GAP, "u=18521291 but previous u=18521289")
    )
    repeated = book_message("delta", 18_521_289, [["16493.00", "0.7"]], [])
    assert _apply(sync, parser, repeated).problem == SyncProblem(
        ProblemKind.GAP, "u=18521289 but previous u=18521289"
    )
    assert _levels(sync)[0] == ((fx("16493.00"), fx("0.5")),)  # nothing applied


def test_a_snapshot_replaces_the_book_at_any_u_and_u_1_restarts_the_count() -> None:
    parser, sync = BybitParser(SPOT), BybitBookSync(BTC)
    _apply(sync, parser, SNAPSHOT)
    resent = book_message("snapshot", 500, [["16400", "2"]], [["16700", "3"]])
    assert _apply(sync, parser, resent).snapshot is not None
    assert _levels(sync) == (((fx("16400"), fx("2")),), ((fx("16700"), fx("3")),))
    restart = book_message("delta", 1, [["16300", "1"]], [["16800", "1"]])
    assert _apply(sync, parser, restart).snapshot is not None
    assert _levels(sync) == (((fx("16300"), fx("1")),), ((fx("16800"), fx("1")),))
    result = _apply(sync, parser, book_message("delta", 2, [], [["16800", "0"], ["16900", "4"]]))
    assert result.snapshot is not None and sync.last_update_id == 2
    assert _levels(sync)[1] == ((fx("16900"), fx("4")),)


def test_reset_waits_for_the_next_snapshot_and_a_crossed_book_is_a_problem() -> None:
    parser, sync = BybitParser(SPOT), BybitBookSync(BTC)
    _apply(sync, parser, SNAPSHOT)
    sync.reset()
    assert (sync.live, sync.last_update_id, len(sync.book)) == (False, None, 0)
    assert _apply(sync, parser, book_message("delta", 18_521_289, [], [])) is NOTHING
    _apply(sync, parser, SNAPSHOT)
    crossing = book_message("delta", 18_521_289, [["16611.00", "1"]], [])
    result = _apply(sync, parser, crossing)
    assert result.problem is not None and result.problem.kind is ProblemKind.CROSSED


def test_adapter_frames_and_urls() -> None:
    many = SymbolMap("bybit", {f"C{i}-USDT": f"C{i}USDT" for i in range(12)})
    adapter = BybitAdapter(many, ws_base="ws://127.0.0.1:9/")
    assert adapter.stream_url(many.instruments()) == "ws://127.0.0.1:9/v5/public/spot"
    frames = [orjson.loads(frame) for frame in adapter.subscribe_frames(many.instruments())]
    assert frames == [
        {"op": "subscribe", "args": [f"orderbook.50.C{i}USDT" for i in range(10)]},
        {"op": "subscribe", "args": ["orderbook.50.C10USDT", "orderbook.50.C11USDT"]},
    ]
    linear = BybitAdapter(LINEAR, category=BybitCategory.LINEAR, depth=200)
    name = "bybit-linear:BTC-USDT-PERP"
    assert linear.stream_url([name]) == "wss://stream.bybit.com/v5/public/linear"
    assert [orjson.loads(frame) for frame in linear.resubscribe_frames(name)] == [
        {"op": "unsubscribe", "args": ["orderbook.200.BTCUSDT"]},
        {"op": "subscribe", "args": ["orderbook.200.BTCUSDT"]},
    ]
    assert orjson.loads(linear.app_ping_frame()) == {"op": "ping"}
    assert linear.app_ping_interval == 20.0
    assert linear.idle_probe is IdleProbe.APP  # a quiet link is pinged before it is silent
    assert isinstance(linear.new_sync(name, capture_depth=5), BybitBookSync)
    with pytest.raises(ValueError, match="depth must be one of"):
        BybitAdapter(SPOT, depth=25)
