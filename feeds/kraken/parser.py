"""Kraken spot websocket frames (v2, and v1 for recordings) -> normalized events (sans-I/O).

v2 (``wss://ws.kraken.com/v2``; prices and quantities are JSON numbers)::

    {"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",
     "bids":[{"price":29430.2,"qty":0.18967538},...],"asks":[{"price":29430.3,"qty":8.25215653},...],
     "checksum":2785033588,"timestamp":"2023-07-30T15:29:58.343415Z"}]}
    {"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],
     "asks":[{"price":29431.1,"qty":0.0}],"checksum":3547452596,
     "timestamp":"2023-07-30T15:29:58.343415Z"}]}                           (qty 0 deletes)
    {"channel":"heartbeat"}
    {"method":"pong","req_id":7,"time_in":"...","time_out":"..."}
    {"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,
     "symbol":"BTC/USD"},"success":true,"time_in":"...","time_out":"..."}
    {"error":"Currency pair not supported","method":"subscribe","success":false,
     "symbol":"BTC/USDX","time_in":"...","time_out":"..."}
    {"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":1,
     "system":"online","version":"2.0.0"}]}
    {"channel":"instrument","type":"snapshot","data":{"assets":[...],"pairs":[{"symbol":"BTC/USD",
     "price_precision":1,"qty_precision":8,...}]}}

v1 (``wss://ws.kraken.com``; padded decimal strings, ``XBT`` for BTC; the checksum ``c``
only on updates; a level's 4th field ``"r"`` marks a level republished because it came
back into the subscribed depth)::

    [336,{"as":[["27120.00000","4.28732553","1693415327.935623"],...],"bs":[...]},
     "book-10","XBT/USD"]
    [336,{"b":[["27119.90000","13.54109952","1693415330.621700"]],"c":"3572756970"},
     "book-10","XBT/USD"]
    [336,{"a":[["27130.20000","0.01237956","1693415479.752899"]]},
     {"b":[["27116.80000","0.14741986","1693415325.036931","r"]],"c":"974947235"},
     "book-10","XBT/USD"]
    {"event":"heartbeat"}   {"event":"pong","reqid":1}   {"event":"systemStatus",...}
    {"event":"subscriptionStatus","status":"subscribed"|"error","pair":"XBT/USD",...}

The parser records precisions the venue states (v2 ``instrument`` pairs, the decimals
of a v1 snapshot's strings) in the adapter's ``PrecisionTable``, which the book syncs
read for their checksums.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from book.fixed import fixed_from_number, parse_fixed
from book.snapshot import Level
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ControlEvent,
    FeedEvent,
    HeartbeatEvent,
    IgnoredEvent,
    MalformedEvent,
    VenueErrorEvent,
)
from feeds.frames import MESSAGE_ERRORS, decode_frame, frame_text, unexpected_message
from feeds.kraken.checksum import Precision, PrecisionTable, decimals
from feeds.symbols import SymbolMap

V1_ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}
"""v1 pair names spell these assets the old way (``XBT/USD`` is v2 ``BTC/USD``)."""

_HEARTBEAT = HeartbeatEvent()
_IGNORED = IgnoredEvent()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PICO_PER_NS = 1_000  # fixed point has 12 decimals: seconds -> 10**-12 s units


class KrakenParser:
    """Parse one websocket frame into events. O(levels in the frame); no I/O.

    Its only state is the shared ``PrecisionTable`` it writes what the venue states
    into, and a cache of v1 pair names.
    """

    __slots__ = ("symbols", "precisions", "_v1_names")

    def __init__(self, symbols: SymbolMap, precisions: PrecisionTable) -> None:
        self.symbols = symbols
        self.precisions = precisions
        self._v1_names: dict[str, str | None] = {}

    def parse(self, frame: str | bytes) -> list[FeedEvent]:
        message = decode_frame(frame)
        if isinstance(message, MalformedEvent):
            return [message]
        try:
            if isinstance(message, dict):
                return self._object(message)
            if isinstance(message, list):
                return [self._v1_array(message)]
        except MESSAGE_ERRORS as exc:
            return [unexpected_message("Kraken", exc, frame)]
        return [MalformedEvent("frame is neither a JSON object nor an array", frame_text(frame))]

    # -- v2 ----------------------------------------------------------------------------

    def _object(self, message: dict[str, Any]) -> list[FeedEvent]:
        channel = message.get("channel")
        if channel == "book":
            kind = message["type"]
            if kind not in ("snapshot", "update"):
                raise ValueError(f"unknown book message type {kind!r}")
            return [self._v2_book(entry, snapshot=kind == "snapshot") for entry in message["data"]]
        if channel == "heartbeat":
            return [_HEARTBEAT]
        if channel == "status":
            return [_system_status(entry["system"], entry) for entry in message["data"]]
        if channel == "instrument":
            return [self._instruments(message["data"]["pairs"])]
        if channel is not None:
            return [_IGNORED]  # ticker, trade, ohlc: other channels of the same connection
        method = message.get("method")
        if method == "pong":
            return [_HEARTBEAT]
        if "success" in message:
            return [self._reply(method, message)]
        if "event" in message:
            return [self._v1_event(message)]
        raise ValueError("neither a channel message, a reply nor a v1 event")

    def _v2_book(self, entry: dict[str, Any], *, snapshot: bool) -> FeedEvent:
        instrument = self.symbols.instrument(entry["symbol"])
        if instrument is None:
            return _IGNORED
        bids = _v2_levels(entry["bids"])
        asks = _v2_levels(entry["asks"])
        checksum = int(entry["checksum"])
        stamp = entry.get("timestamp")
        ts_event = 0 if stamp is None else rfc3339_ns(stamp)
        if snapshot:
            return BookSnapshotEvent(instrument, bids, asks, ts_event=ts_event, checksum=checksum)
        return BookDeltaEvent(instrument, bids, asks, ts_event=ts_event, checksum=checksum)

    def _instruments(self, pairs: list[dict[str, Any]]) -> FeedEvent:
        """Record the price/qty precision of every configured pair listed."""
        learned: list[str] = []
        for pair in pairs:
            instrument = self.symbols.instrument(pair["symbol"])
            if instrument is None:
                continue
            precision = Precision(int(pair["price_precision"]), int(pair["qty_precision"]))
            self.precisions.set(instrument, precision)
            learned.append(f"{pair['symbol']} {precision.price}/{precision.qty}")
        return ControlEvent(f"instrument precisions: {', '.join(learned) or 'none configured'}")

    def _reply(self, method: object, message: dict[str, Any]) -> FeedEvent:
        """A ``subscribe``/``unsubscribe``/other request's acknowledgement or error."""
        if message["success"] is True:
            result = message.get("result") or {}
            what = [str(result[key]) for key in ("channel", "symbol", "depth") if key in result]
            return ControlEvent(" ".join([str(method), *what, "acknowledged"]))
        symbol = message.get("symbol")
        instrument = None if symbol is None else self.symbols.instrument(str(symbol))
        return VenueErrorEvent(
            f"Kraken {method or 'request'} failed: {message.get('error', 'no reason given')}"
            + (f" ({symbol})" if symbol is not None else ""),
            instrument=instrument,
        )

    # -- v1 ----------------------------------------------------------------------------

    def _v1_event(self, message: dict[str, Any]) -> FeedEvent:
        event = message["event"]
        if event in ("heartbeat", "pong"):
            return _HEARTBEAT
        if event == "systemStatus":
            return _system_status(message["status"], message)
        if event == "subscriptionStatus":
            pair = message.get("pair")
            instrument = None if pair is None else self._v1_instrument(str(pair))
            if message["status"] == "error":
                return VenueErrorEvent(
                    f"Kraken subscription failed: {message.get('errorMessage', '?')} ({pair})",
                    instrument=instrument,
                )
            return ControlEvent(f"{message['status']} {message.get('channelName', '')} {pair}")
        return _IGNORED

    def _v1_array(self, message: list[Any]) -> FeedEvent:
        """``[channelID, payload, (payload,) channelName, pair]``."""
        if len(message) < 4 or not isinstance(message[0], int):
            raise ValueError("a v1 channel message starts with its integer channel id")
        channel_name, pair = message[-2], message[-1]
        if not str(channel_name).startswith("book-"):
            return _IGNORED
        instrument = self._v1_instrument(pair)
        if instrument is None:
            return _IGNORED
        payloads: list[dict[str, Any]] = message[1:-2]
        if "as" in payloads[0] or "bs" in payloads[0]:
            return self._v1_snapshot(instrument, payloads[0])
        bids: tuple[Level, ...] = ()
        asks: tuple[Level, ...] = ()
        checksum: int | None = None
        ts_event = 0
        for payload in payloads:
            if "a" in payload:
                asks, ts = _v1_levels(payload["a"])
                ts_event = max(ts_event, ts)
            if "b" in payload:
                bids, ts = _v1_levels(payload["b"])
                ts_event = max(ts_event, ts)
            if "c" in payload:
                checksum = int(payload["c"])
        if checksum is None:
            raise ValueError("v1 book update without checksum 'c'")
        return BookDeltaEvent(instrument, bids, asks, ts_event=ts_event, checksum=checksum)

    def _v1_snapshot(self, instrument: str, payload: dict[str, Any]) -> FeedEvent:
        raw_asks, raw_bids = payload["as"], payload["bs"]
        asks, ts_asks = _v1_levels(raw_asks)
        bids, ts_bids = _v1_levels(raw_bids)
        sample = (raw_asks or raw_bids)[0]
        self.precisions.set(instrument, Precision(decimals(sample[0]), decimals(sample[1])))
        return BookSnapshotEvent(instrument, bids, asks, ts_event=max(ts_asks, ts_bids))

    def _v1_instrument(self, pair: str) -> str | None:
        if pair in self._v1_names:
            return self._v1_names[pair]
        base, _, quote = pair.partition("/")
        v2_name = f"{V1_ASSET_ALIASES.get(base, base)}/{V1_ASSET_ALIASES.get(quote, quote)}"
        instrument = self.symbols.instrument(v2_name)
        self._v1_names[pair] = instrument
        return instrument


def _v2_levels(raw: list[dict[str, Any]]) -> tuple[Level, ...]:
    """``[{"price": 29430.2, "qty": 0.001}, ...]`` -> fixed-point levels. O(k)."""
    return tuple([(fixed_from_number(lvl["price"]), fixed_from_number(lvl["qty"])) for lvl in raw])


def _v1_levels(raw: list[list[str]]) -> tuple[tuple[Level, ...], int]:
    """``[["27120.00000","4.28732553","1693415327.935623"(,"r")], ...]`` -> levels and the
    latest level time (ns). O(k)."""
    levels = tuple([(parse_fixed(lvl[0]), parse_fixed(lvl[1])) for lvl in raw])
    latest = max((parse_fixed(lvl[2]) for lvl in raw), default=0) // _PICO_PER_NS
    return levels, latest


def _system_status(system: str, message: dict[str, Any]) -> FeedEvent:
    if system == "online":
        return ControlEvent(f"system online ({message.get('version', '?')})")
    return VenueErrorEvent(f"Kraken system status: {system}")


def rfc3339_ns(text: str) -> int:
    """``"2023-07-30T15:29:58.343415Z"`` -> ns since the epoch (exact to the µs)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND * 1_000
