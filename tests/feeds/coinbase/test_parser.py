"""Coinbase Advanced Trade parser, sync and adapter on messages in the documented format.

Shapes from docs.cdp.coinbase.com (Advanced Trade websocket overview, channels, level2
and heartbeats pages): one ``sequence_num`` counter per connection across channels.
"""

from __future__ import annotations

import orjson
import pytest

from book.fixed import parse_fixed
from feeds.coinbase.adapter import CoinbaseAdapter
from feeds.coinbase.parser import CoinbaseParser, parse_timestamp
from feeds.coinbase.sync import CoinbaseBookSync
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ConnectionGapEvent,
    ControlEvent,
    HeartbeatEvent,
    IgnoredEvent,
    MalformedEvent,
    VenueErrorEvent,
)
from feeds.recordings import FrameKind, RecordedFrame
from feeds.replay import Replay
from feeds.symbols import SymbolMap
from feeds.sync import NOTHING, ProblemKind

SYMBOLS = SymbolMap("coinbase", {"BTC-USD": "BTC-USD", "ETH-USD": "ETH-USD"})
BTC = "coinbase:BTC-USD"
TIMESTAMP = "2023-02-09T20:32:50.714964855Z"
TS_NS = 1_675_974_770_714_964_855


def fx(text: str) -> int:
    return parse_fixed(text)


def l2(
    sequence: int, kind: str, updates: list[tuple[str, str, str]], product: str = "BTC-USD"
) -> str:
    return orjson.dumps(
        {
            "channel": "l2_data",
            "client_id": "",
            "timestamp": TIMESTAMP,
            "sequence_num": sequence,
            "events": [
                {
                    "type": kind,
                    "product_id": product,
                    "updates": [
                        {
                            "side": side,
                            "event_time": "2023-02-09T20:32:50.714964Z",
                            "price_level": price,
                            "new_quantity": qty,
                        }
                        for side, price, qty in updates
                    ],
                }
            ],
        }
    ).decode()


def heartbeat(sequence: int) -> str:
    return orjson.dumps(
        {
            "channel": "heartbeats",
            "client_id": "",
            "timestamp": TIMESTAMP,
            "sequence_num": sequence,
            "events": [
                {
                    "current_time": "2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105",
                    "heartbeat_counter": 3049,
                }
            ],
        }
    ).decode()


SUBSCRIPTIONS = orjson.dumps(
    {
        "channel": "subscriptions",
        "client_id": "",
        "timestamp": TIMESTAMP,
        "sequence_num": 0,
        "events": [{"subscriptions": {"level2": ["BTC-USD"], "heartbeats": ["heartbeats"]}}],
    }
).decode()

SNAPSHOT = [
    ("bid", "21921.73", "0.06317902"),
    ("bid", "21921.3", "0.002"),
    ("offer", "21921.74", "0.01"),
    ("offer", "21922.5", "1.5"),
]


def test_snapshot_and_update_become_book_events_with_exact_levels() -> None:
    parser = CoinbaseParser(SYMBOLS)
    (snapshot,) = parser.parse(l2(0, "snapshot", SNAPSHOT))
    assert snapshot == BookSnapshotEvent(
        BTC,
        ((fx("21921.73"), fx("0.06317902")), (fx("21921.3"), fx("0.002"))),
        ((fx("21921.74"), fx("0.01")), (fx("21922.5"), fx("1.5"))),
        ts_event=TS_NS,
    )
    frame = l2(1, "update", [("offer", "21921.74", "0"), ("bid", "21921.5", "0.3")])
    assert parser.parse(frame.encode()) == [
        BookDeltaEvent(
            BTC,
            ((fx("21921.5"), fx("0.3")),),
            ((fx("21921.74"), 0),),
            ts_event=TS_NS,
        )
    ]


def test_one_sequence_over_every_channel_and_a_break_is_a_connection_gap() -> None:
    parser = CoinbaseParser(SYMBOLS)
    assert parser.parse(SUBSCRIPTIONS) == [
        ControlEvent('subscriptions {"level2":["BTC-USD"],"heartbeats":["heartbeats"]}')
    ]
    assert parser.parse(l2(1, "snapshot", SNAPSHOT))[0].__class__ is BookSnapshotEvent
    assert parser.parse(heartbeat(2)) == [HeartbeatEvent()]
    update = l2(4, "update", [("bid", "21921.73", "0")])
    assert parser.parse(update) == [
        ConnectionGapEvent("sequence_num 4, expected 3"),
        BookDeltaEvent(BTC, ((fx("21921.73"), 0),), (), ts_event=TS_NS),
    ]
    assert parser.parse(heartbeat(5)) == [HeartbeatEvent()]
    # A lost heartbeat is a lost message too: nobody can say it was not a book update.
    assert parser.parse(heartbeat(7)) == [
        ConnectionGapEvent("sequence_num 7, expected 6"),
        HeartbeatEvent(),
    ]


def test_every_connection_counts_from_zero() -> None:
    adapter = CoinbaseAdapter(SYMBOLS)
    first = adapter.new_parser()
    assert first.parse(heartbeat(0)) == [HeartbeatEvent()]
    assert first.parse(heartbeat(1)) == [HeartbeatEvent()]
    second = adapter.new_parser()  # a new connection
    assert second.parse(heartbeat(0)) == [HeartbeatEvent()]
    assert second.parse(heartbeat(1)) == [HeartbeatEvent()]
    assert second.parse(heartbeat(0)) == [
        ConnectionGapEvent("sequence_num 0, expected 2"),
        HeartbeatEvent(),
    ]
    # Messages lost before the first one arrived (the subscription's snapshot) show too.
    assert adapter.new_parser().parse(heartbeat(2)) == [
        ConnectionGapEvent("sequence_num 2, expected 0"),
        HeartbeatEvent(),
    ]


def test_two_connections_open_at_once_keep_their_own_numbers() -> None:
    """Make-before-break: the old connection and its standby interleave, each numbered
    from 0 by Coinbase; neither's numbers are a gap of the other's."""
    adapter = CoinbaseAdapter(SYMBOLS)
    old, standby = adapter.new_parser(), adapter.new_parser()
    for number in range(5):
        assert old.parse(heartbeat(number)) == [HeartbeatEvent()]
    for number in range(3):
        assert standby.parse(heartbeat(number)) == [HeartbeatEvent()]
        assert old.parse(heartbeat(5 + number)) == [HeartbeatEvent()]
    # A loss on one of them is still seen, on that one only.
    assert standby.parse(heartbeat(4)) == [
        ConnectionGapEvent("sequence_num 4, expected 3"),
        HeartbeatEvent(),
    ]
    assert old.parse(heartbeat(8)) == [HeartbeatEvent()]


def test_errors_other_channels_and_other_products() -> None:
    parser = CoinbaseParser(SYMBOLS)
    assert parser.parse('{"type":"error","message":"failure to subscribe"}') == [
        VenueErrorEvent("Coinbase error: failure to subscribe")
    ]
    ticker = {
        "channel": "ticker",
        "timestamp": TIMESTAMP,
        "sequence_num": 0,
        "events": [{"type": "update", "tickers": []}],
    }
    assert parser.parse(orjson.dumps(ticker)) == [IgnoredEvent()]
    assert parser.parse(l2(1, "update", [("bid", "1", "1")], product="SOL-USD")) == [IgnoredEvent()]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"channel":"l2_data","sequence_num":3,"ev', "invalid JSON"),
        ("[1,2]", "frame is not a JSON object"),
        ('{"hello":"world"}', "neither a channel message nor an error"),
        ('{"type":"error"}', "KeyError('message')"),
    ],
)
def test_malformed_frames_are_reported_not_raised(frame: str, reason: str) -> None:
    (event,) = CoinbaseParser(SYMBOLS).parse(frame)
    assert isinstance(event, MalformedEvent)
    assert reason in event.reason
    assert event.raw == frame


@pytest.mark.parametrize(
    "frame",
    [
        l2(1, "update", [("ask", "21921.74", "1")]),  # the side is "offer"
        l2(1, "update", [("bid", "21921,74", "1")]),
        l2(1, "refresh", [("bid", "21921.74", "1")]),
        l2(1, "update", [("bid", "21921.74", "1")]).replace(TIMESTAMP, "yesterday"),
    ],
)
def test_an_l2_message_that_cannot_be_applied_counts_as_lost(frame: str) -> None:
    parser = CoinbaseParser(SYMBOLS)
    assert parser.parse(heartbeat(0)) == [HeartbeatEvent()]
    malformed, gap = parser.parse(frame)
    assert isinstance(malformed, MalformedEvent)
    assert gap == ConnectionGapEvent("l2_data message 1 not understood")
    assert parser.parse(heartbeat(2)) == [HeartbeatEvent()]  # its number did arrive


def test_l2_data_without_sequence_num_is_malformed() -> None:
    frame = l2(0, "update", [("bid", "1", "1")]).replace('"sequence_num":0,', "")
    malformed, gap = CoinbaseParser(SYMBOLS).parse(frame)
    assert isinstance(malformed, MalformedEvent)
    assert "l2_data without a sequence_num" in malformed.reason
    assert gap == ConnectionGapEvent("l2_data message None not understood")


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        (TIMESTAMP, TS_NS),
        ("2023-02-09T20:32:50.714964Z", 1_675_974_770_714_964_000),
        ("2023-02-09T20:32:50Z", 1_675_974_770_000_000_000),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_timestamps_keep_every_nanosecond(text: str, ns: int) -> None:
    assert parse_timestamp(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-09T20:32:50.1234567891Z",
        "2023-02-09T20:32:50.7+1Z",
        "2023-02-09 20:32",
        "2023-02-09T20:32:50+05:00Z",
    ],
)
def test_bad_timestamps_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def _book(sync: CoinbaseBookSync) -> tuple[object, object]:
    return sync.book.top_bids(10), sync.book.top_asks(10)


def test_sync_waits_for_a_snapshot_then_applies_absolute_updates() -> None:
    parser, sync = CoinbaseParser(SYMBOLS), CoinbaseBookSync(BTC, capture_depth=10)
    (early,) = parser.parse(l2(0, "update", [("bid", "21000", "1")]))
    assert isinstance(early, BookDeltaEvent)
    assert sync.on_delta(early, 1) is NOTHING  # the tail of an old subscription
    (snapshot,) = parser.parse(l2(1, "snapshot", SNAPSHOT))
    assert isinstance(snapshot, BookSnapshotEvent)
    result = sync.on_snapshot(snapshot, 2)
    assert result.snapshot is not None and sync.live
    assert (result.snapshot.bid, result.snapshot.ask) == (fx("21921.73"), fx("21921.74"))
    changes = [
        ("offer", "21921.74", "0"),  # removes the best ask
        ("offer", "21930", "0"),  # removing a level that is not in the book is harmless
        ("bid", "21921.3", "0.5"),  # absolute, not added
    ]
    (update,) = parser.parse(l2(2, "update", changes))
    assert isinstance(update, BookDeltaEvent)
    result = sync.on_delta(update, 3)
    assert result.snapshot is not None
    assert result.snapshot.bids == ((fx("21921.73"), fx("0.06317902")), (fx("21921.3"), fx("0.5")))
    assert result.snapshot.asks == ((fx("21922.5"), fx("1.5")),)
    assert result.snapshot.ts_event == TS_NS
    # A later snapshot (a resubscription) replaces the whole book.
    (again,) = parser.parse(l2(3, "snapshot", [("bid", "100", "1"), ("offer", "101", "2")]))
    assert isinstance(again, BookSnapshotEvent)
    result = sync.on_snapshot(again, 4)
    assert result.snapshot is not None
    assert _book(sync) == (((fx("100"), fx("1")),), ((fx("101"), fx("2")),))


def test_sync_reset_waits_for_the_next_snapshot_and_a_crossed_book_is_a_problem() -> None:
    parser, sync = CoinbaseParser(SYMBOLS), CoinbaseBookSync(BTC)
    (snapshot,) = parser.parse(l2(0, "snapshot", SNAPSHOT))
    assert isinstance(snapshot, BookSnapshotEvent)
    sync.on_snapshot(snapshot, 1)
    sync.reset()
    (update,) = parser.parse(l2(1, "update", [("bid", "21925", "1")]))
    assert isinstance(update, BookDeltaEvent)
    assert sync.on_delta(update, 2) is NOTHING
    assert not sync.live and len(sync.book) == 0
    sync.on_snapshot(snapshot, 3)
    result = sync.on_delta(update, 4)
    assert result.problem is not None and result.problem.kind is ProblemKind.CROSSED


def test_adapter_subscribes_level2_and_heartbeats_one_channel_per_message() -> None:
    adapter = CoinbaseAdapter(SYMBOLS, ws_url="ws://127.0.0.1:1/")
    assert adapter.max_instruments_per_connection == 1
    assert adapter.stream_url([BTC]) == "ws://127.0.0.1:1"
    assert CoinbaseAdapter(SYMBOLS).stream_url([BTC]) == "wss://advanced-trade-ws.coinbase.com"
    assert [orjson.loads(f) for f in adapter.subscribe_frames([BTC])] == [
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2"},
        {"type": "subscribe", "channel": "heartbeats"},
    ]
    assert [orjson.loads(f) for f in adapter.resubscribe_frames(BTC)] == [
        {"type": "unsubscribe", "product_ids": ["BTC-USD"], "channel": "level2"},
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2"},
    ]
    assert adapter.app_ping_frame() is None
    assert isinstance(adapter.new_sync(BTC, capture_depth=5), CoinbaseBookSync)


def test_replay_parses_each_recorded_connection_on_its_own() -> None:
    """A recording holds a reconnect (numbered from 0 again) and two connections open
    at once (a rotation): no gap in either; a loss on one is still one gap."""
    frames = [
        RecordedFrame(1, FrameKind.CONNECT, "", conn=1),
        RecordedFrame(2, FrameKind.RECV, heartbeat(0), conn=1),
        RecordedFrame(3, FrameKind.RECV, heartbeat(1), conn=1),
        RecordedFrame(4, FrameKind.CONNECT, "", conn=2),
        RecordedFrame(5, FrameKind.RECV, heartbeat(0), conn=2),
        RecordedFrame(6, FrameKind.RECV, heartbeat(2), conn=1),
        RecordedFrame(7, FrameKind.RECV, heartbeat(1), conn=2),
        RecordedFrame(8, FrameKind.CONNECT, "", conn=1),
        RecordedFrame(9, FrameKind.RECV, heartbeat(0), conn=1),
    ]
    replay = Replay(CoinbaseAdapter(SYMBOLS))
    assert list(replay.snapshots(frames)) == []
    assert replay.session.counters.gaps == 0
    lost = [*frames, RecordedFrame(10, FrameKind.RECV, heartbeat(3), conn=2)]
    replay = Replay(CoinbaseAdapter(SYMBOLS))
    list(replay.snapshots(lost))
    assert replay.session.counters.gaps == len(SYMBOLS.instruments())
