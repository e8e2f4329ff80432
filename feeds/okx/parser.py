"""OKX v5 public websocket frames -> normalized events (sans-I/O).

Raw frames this parser understands (``wss://ws.okx.com:8443/ws/v5/public``)::

    {"arg":{"channel":"books","instId":"BTC-USDT"},"action":"snapshot","data":[{
      "asks":[["8476.98","415","0","13"],["8477","7","0","2"]],
      "bids":[["8476.97","256","0","12"],["8475.55","101","0","1"]],
      "ts":"1597026383085","checksum":-855196043,"prevSeqId":-1,"seqId":123456}]}
    {"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{
      "asks":[["8476.98","0","0","0"]],"bids":[],
      "ts":"1597026383185","checksum":0,"prevSeqId":123456,"seqId":123457}]}
    {"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a4d3ae55"}
    {"event":"unsubscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a4d3ae55"}
    {"event":"error","code":"60012","msg":"Invalid request: ...","connId":"a4d3ae55"}
    {"event":"notice","code":"64008","msg":"The connection will soon be closed for a
      service upgrade. Please reconnect.","connId":"a4d3ae55"}
    pong

The tick-by-tick channels ``books-l2-tbt`` and ``books50-l2-tbt`` look like ``books``;
``books5`` and ``bbo-tbt`` send the whole top of the book each time, without
``action``, ``prevSeqId`` or ``checksum`` (``feeds.okx.channels``)::

    {"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{
      "asks":[["8476.98","415","0","13"]],"bids":[["8476.97","256","0","12"]],
      "ts":"1597026383085","seqId":123457}]}

Level rows are ``[price, size, "0" (deprecated), number of orders]``; size ``"0"``
deletes the level. Recordings from before 2022-06 have no ``seqId``/``prevSeqId``;
since 2026 ``checksum`` is always 0. Book events keep the exchange's own price and size
strings beside the fixed-point levels: the checksum is computed over those strings.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from feeds.okx.channels import BOOK_CHANNELS, RULES, OkxChannel
from feeds.okx.checksum import TextLevel
from feeds.symbols import SymbolMap

SERVICE_UPGRADE_NOTICE = "64008"
"""``notice`` code sent before OKX closes a connection for a service upgrade."""

_MS = 1_000_000
_IGNORED = IgnoredEvent()
_HEARTBEAT = HeartbeatEvent()
_PONG = ("pong", b"pong")


@dataclass(frozen=True, slots=True)
class OkxSnapshotEvent(BookSnapshotEvent):
    """A ``books`` snapshot; ``bid_text``/``ask_text`` are its rows' own strings."""

    bid_text: tuple[TextLevel, ...] = ()
    ask_text: tuple[TextLevel, ...] = ()


@dataclass(frozen=True, slots=True)
class OkxDeltaEvent(BookDeltaEvent):
    """A ``books`` update (``last_id`` = seqId, ``prev_id`` = prevSeqId), with its rows'
    own strings."""

    bid_text: tuple[TextLevel, ...] = ()
    ask_text: tuple[TextLevel, ...] = ()


def _rows(raw: list[list[str]]) -> tuple[tuple[Level, ...], tuple[TextLevel, ...]]:
    """``[["px","sz","0","n"], ...]`` -> fixed-point levels and the (px, sz) strings. O(k)."""
    levels: list[Level] = []
    texts: list[TextLevel] = []
    for px, sz, *_ in raw:
        levels.append((parse_fixed(px), parse_fixed(sz)))
        texts.append((px, sz))
    return tuple(levels), tuple(texts)


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


class OkxParser:
    """Parse one websocket frame into events. O(levels in the frame); no I/O, no state."""

    __slots__ = ("symbols",)

    def __init__(self, symbols: SymbolMap) -> None:
        self.symbols = symbols

    def parse(self, frame: str | bytes) -> list[FeedEvent]:
        if frame in _PONG:
            return [_HEARTBEAT]
        return parse_object(frame, "OKX", self._events)

    def _events(self, message: dict[str, Any]) -> list[FeedEvent]:
        event = message.get("event")
        if event is not None:
            return [self._control(str(event), message)]
        arg = message["arg"]
        data = message["data"]
        if not isinstance(data, list):
            raise TypeError("data is not a list")
        channel = arg["channel"]
        if channel not in BOOK_CHANNELS:
            return [_IGNORED]  # trades, tickers: other channels of the same connection
        instrument = self.symbols.instrument(arg["instId"])
        if instrument is None:
            return [_IGNORED]
        if not RULES[OkxChannel(channel)].incremental:
            # books5, bbo-tbt: every message is the whole (top of the) book
            return [self._snapshot(instrument, entry) for entry in data]
        action = message["action"]
        if action == "snapshot":
            return [self._snapshot(instrument, entry) for entry in data]
        if action == "update":
            return [self._delta(instrument, entry) for entry in data]
        raise ValueError(f"unknown books action {action!r}")

    def _snapshot(self, instrument: str, entry: dict[str, Any]) -> OkxSnapshotEvent:
        bids, bid_text = _rows(entry["bids"])
        asks, ask_text = _rows(entry["asks"])
        return OkxSnapshotEvent(
            instrument,
            bids,
            asks,
            update_id=_optional_int(entry.get("seqId")),
            ts_event=int(entry["ts"]) * _MS,
            checksum=_optional_int(entry.get("checksum")),
            bid_text=bid_text,
            ask_text=ask_text,
        )

    def _delta(self, instrument: str, entry: dict[str, Any]) -> OkxDeltaEvent:
        bids, bid_text = _rows(entry["bids"])
        asks, ask_text = _rows(entry["asks"])
        return OkxDeltaEvent(
            instrument,
            bids,
            asks,
            last_id=_optional_int(entry.get("seqId")),
            prev_id=_optional_int(entry.get("prevSeqId")),
            ts_event=int(entry["ts"]) * _MS,
            checksum=_optional_int(entry.get("checksum")),
            bid_text=bid_text,
            ask_text=ask_text,
        )

    def _control(self, event: str, message: dict[str, Any]) -> FeedEvent:
        arg = message.get("arg")
        target = ""
        instrument = None
        if isinstance(arg, dict):
            target = f" {arg.get('channel')} {arg.get('instId')}"
            inst_id = arg.get("instId")
            instrument = self.symbols.instrument(inst_id) if isinstance(inst_id, str) else None
        if event in ("subscribe", "unsubscribe"):
            return ControlEvent(f"{event}{target}")
        if event == "error":
            return VenueErrorEvent(
                f"OKX error {message.get('code')}: {message.get('msg')}", instrument=instrument
            )
        if event == "notice":
            code = message.get("code")
            return VenueErrorEvent(
                f"OKX notice {code}: {message.get('msg')}",
                reconnect=code == SERVICE_UPGRADE_NOTICE,
            )
        return ControlEvent(f"{event}{target}")  # login, channel-conn-count
