"""Coinbase Advanced Trade market-data frames -> normalized events (sans-I/O).

Raw frames this parser understands (``wss://advanced-trade-ws.coinbase.com``)::

    {"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:50.714964855Z",
     "sequence_num":0,"events":[{"type":"snapshot","product_id":"BTC-USD","updates":[
       {"side":"bid","event_time":"1970-01-01T00:00:00Z","price_level":"21921.73",
        "new_quantity":"0.06317902"},
       {"side":"offer","event_time":"1970-01-01T00:00:00Z","price_level":"21921.74",
        "new_quantity":"0.01"}]}]}
    (then "type":"update" events: new_quantity is the level's new absolute size, "0" removes)
    {"channel":"heartbeats","client_id":"","timestamp":"..","sequence_num":7,
     "events":[{"current_time":"2023-06-23 20:31:56.121961769 +0000 UTC",
                "heartbeat_counter":3049}]}
    {"channel":"subscriptions","client_id":"","timestamp":"..","sequence_num":1,
     "events":[{"subscriptions":{"level2":["BTC-USD"],"heartbeats":["heartbeats"]}}]}
    {"type":"error","message":"failure to subscribe"}

``sequence_num`` is ONE counter per connection across every channel, so a break says a
message of the connection was lost without saying whose: the parser keeps the last
number and reports a ``ConnectionGapEvent`` (the runner resyncs every instrument of the
connection). One parser serves one connection (its session makes it): a connection's
first message is number 0, so a new parser expects 0 first and even a loss before
anything arrived (a subscription's snapshot) shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from book.fixed import parse_fixed
from book.snapshot import Level
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ConnectionGapEvent,
    ControlEvent,
    FeedEvent,
    HeartbeatEvent,
    IgnoredEvent,
    MalformedEvent,
    VenueErrorEvent,
)
from feeds.frames import MESSAGE_ERRORS, decode_object, unexpected_message
from feeds.symbols import SymbolMap

_IGNORED = IgnoredEvent()
_HEARTBEAT = HeartbeatEvent()
_NS = 1_000_000_000


def parse_timestamp(text: str) -> int:
    """RFC 3339 UTC text (``"2023-02-09T20:32:50.714964855Z"``) -> ns since the epoch.

    Any number of fraction digits up to 9; ``ValueError`` otherwise. O(len(text)).
    """
    if not text.endswith("Z"):
        raise ValueError(f"timestamp is not UTC: {text!r}")
    whole, _, fraction = text[:-1].partition(".")
    if len(fraction) > 9 or (fraction and not fraction.isdigit()):
        raise ValueError(f"bad fraction of a second in {text!r}")
    moment = datetime.fromisoformat(whole)
    if moment.tzinfo is not None:
        raise ValueError(f"two time zones in {text!r}")
    seconds = moment.replace(tzinfo=UTC).timestamp()
    return int(seconds) * _NS + int(fraction.ljust(9, "0") or 0)


def _sides(updates: list[dict[str, str]]) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    """``updates`` -> (bids, asks) in message order. O(k)."""
    bids: list[Level] = []
    asks: list[Level] = []
    for update in updates:
        side = update["side"]
        level = (parse_fixed(update["price_level"]), parse_fixed(update["new_quantity"]))
        if side == "bid":
            bids.append(level)
        elif side == "offer":
            asks.append(level)
        else:
            raise ValueError(f"unknown side {side!r}")
    return tuple(bids), tuple(asks)


class CoinbaseParser:
    """Parse one frame of one connection. O(levels in the frame); no I/O.

    State: the ``sequence_num`` the connection's next message must have; a new
    connection gets a new parser.
    """

    __slots__ = ("symbols", "_expected")

    def __init__(self, symbols: SymbolMap) -> None:
        self.symbols = symbols
        self._expected = 0

    def parse(self, frame: str | bytes) -> list[FeedEvent]:
        message = decode_object(frame)
        if isinstance(message, MalformedEvent):
            return [message]
        events: list[FeedEvent] = []
        sequence = message.get("sequence_num")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            expected, self._expected = self._expected, sequence + 1
            if sequence != expected:
                events.append(ConnectionGapEvent(f"sequence_num {sequence}, expected {expected}"))
        try:
            events += self._events(message)
        except MESSAGE_ERRORS as exc:
            events.append(unexpected_message("Coinbase", exc, frame))
            if message.get("channel") == "l2_data" and not isinstance(
                events[0], ConnectionGapEvent
            ):
                # Book levels of the connection that cannot be applied: as if lost.
                events.append(ConnectionGapEvent(f"l2_data message {sequence} not understood"))
        return events

    def _events(self, message: dict[str, Any]) -> list[FeedEvent]:
        channel = message.get("channel")
        if channel == "l2_data":
            if not isinstance(message.get("sequence_num"), int):
                raise ValueError("l2_data without a sequence_num")
            ts_event = parse_timestamp(message["timestamp"])
            return [self._book_event(event, ts_event) for event in message["events"]]
        if channel == "heartbeats":
            return [_HEARTBEAT]
        if channel == "subscriptions":
            (event,) = message["events"]
            return [ControlEvent(f"subscriptions {orjson.dumps(event['subscriptions']).decode()}")]
        if message.get("type") == "error":
            return [VenueErrorEvent(f"Coinbase error: {message['message']}")]
        if isinstance(channel, str):
            return [_IGNORED]  # ticker, market_trades, candles, status: other channels
        raise ValueError("neither a channel message nor an error")

    def _book_event(self, event: dict[str, Any], ts_event: int) -> FeedEvent:
        kind = event["type"]
        if kind not in ("snapshot", "update"):
            raise ValueError(f"unknown l2_data event type {kind!r}")
        instrument = self.symbols.instrument(event["product_id"])
        if instrument is None:
            return _IGNORED
        bids, asks = _sides(event["updates"])
        if kind == "snapshot":
            return BookSnapshotEvent(instrument, bids, asks, ts_event=ts_event)
        return BookDeltaEvent(instrument, bids, asks, ts_event=ts_event)
