"""Bybit v5 public orderbook frames -> normalized events (sans-I/O, stateless).

Raw frames this parser understands (``wss://stream.bybit.com/v5/public/{spot,linear}``)::

    {"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1672304484978,
     "data":{"s":"BTCUSDT","b":[["16493.50","0.006"]],"a":[["16611.00","0.029"]],
             "u":18521288,"seq":7961638724},"cts":1672304484976}
    {"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1672304484998,
     "data":{"s":"BTCUSDT","b":[["16493.50","0"]],"a":[["16611.50","0.4"]],
             "u":18521289,"seq":7961638725},"cts":1672304484996}
    {"success":true,"ret_msg":"subscribe","conn_id":"2324d924-..","req_id":"","op":"subscribe"}
    {"success":true,"ret_msg":"pong","conn_id":"465772b1-..","req_id":"","op":"ping"}
    {"success":false,"ret_msg":"Invalid symbol :[orderbook.50.BTCUSDX]","conn_id":"..",
     "req_id":"","op":"subscribe"}

Sizes are absolute ("0" deletes). ``u`` numbers one topic's messages; a message with
``u`` = 1 follows a restart of Bybit's service and holds the whole book, so it is
reported as a snapshot whatever its ``type``. ``ts_event`` is ``cts`` (the matching
engine's time), ``ts`` where ``cts`` is absent.
"""

from __future__ import annotations

from typing import Any

from book.fixed import parse_fixed
from book.snapshot import Level
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ControlEvent,
    FeedEvent,
    HeartbeatEvent,
    IgnoredEvent,
    VenueErrorEvent,
)
from feeds.frames import parse_object
from feeds.symbols import SymbolMap

_MS = 1_000_000
_IGNORED = IgnoredEvent()
_HEARTBEAT = HeartbeatEvent()
RESTART_UPDATE_ID = 1
"""``u`` of the full book Bybit sends after restarting its service."""


def _levels(raw: list[list[str]]) -> tuple[Level, ...]:
    """``[["px","size"], ...]`` -> fixed-point levels. O(k)."""
    return tuple([(parse_fixed(px), parse_fixed(size)) for px, size in raw])


class BybitParser:
    """Parse one websocket frame into events. O(levels in the frame); no I/O, no state."""

    __slots__ = ("symbols",)

    def __init__(self, symbols: SymbolMap) -> None:
        self.symbols = symbols

    def parse(self, frame: str | bytes) -> list[FeedEvent]:
        return parse_object(frame, "Bybit", self._message)

    def _message(self, message: dict[str, Any]) -> list[FeedEvent]:
        return [self._event(message)]

    def _event(self, message: dict[str, Any]) -> FeedEvent:
        topic = message.get("topic")
        if isinstance(topic, str):
            if topic.startswith("orderbook."):
                return self._book_event(message)
            return _IGNORED  # publicTrade, tickers, kline: other topics of the connection
        op = message.get("op")
        if op is None:
            raise ValueError("neither a topic message nor a reply")
        if op == "pong" or (op == "ping" and message.get("ret_msg") == "pong"):
            return _HEARTBEAT
        if message["success"] is True:
            return ControlEvent(f"{op} ok (conn_id {message.get('conn_id', '')})")
        return VenueErrorEvent(f"Bybit {op} failed: {message.get('ret_msg', '')}")

    def _book_event(self, message: dict[str, Any]) -> FeedEvent:
        kind = message["type"]
        if kind not in ("snapshot", "delta"):
            raise ValueError(f"unknown orderbook message type {kind!r}")
        data = message["data"]
        instrument = self.symbols.instrument(data["s"])
        if instrument is None:
            return _IGNORED
        update_id = data["u"]
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            raise ValueError(f"u is not an integer: {update_id!r}")
        ts_event = int(message.get("cts") or message["ts"]) * _MS
        bids, asks = _levels(data["b"]), _levels(data["a"])
        if kind == "snapshot" or update_id == RESTART_UPDATE_ID:
            return BookSnapshotEvent(instrument, bids, asks, update_id=update_id, ts_event=ts_event)
        return BookDeltaEvent(
            instrument, bids, asks, first_id=update_id, last_id=update_id, ts_event=ts_event
        )
