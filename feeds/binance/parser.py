"""Binance spot and USD-M market-data frames -> normalized events (sans-I/O).

Raw frames this parser understands (combined streams wrap them in
``{"stream": "btcusdt@depth@100ms", "data": {...}}``)::

    {"e":"depthUpdate","E":1723161255208,"s":"BTCUSDT","U":50093239189,"u":50093239202,
     "b":[["61737.63000000","0.00000000"]],"a":[["61837.64000000","1.54698000"]]}
    (USD-M adds "T" and "pu": the previous event's "u")
    {"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000",
     "a":"61837.64000000","A":"1.54698000"}          (bookTicker; USD-M adds "e","E","T")
    {"lastUpdateId":50093239188,"bids":[[px,qty],...],"asks":[...]}   (REST /api/v3/depth)
    {"result":null,"id":1}     {"code":-1121,"msg":"Invalid symbol."}     {"e":"serverShutdown"}
"""

from __future__ import annotations

from typing import Any

import orjson

from book.fixed import FixedMemo
from book.snapshot import Level
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ControlEvent,
    FeedEvent,
    IgnoredEvent,
    TopOfBookEvent,
    VenueErrorEvent,
)
from feeds.frames import frame_text, parse_object
from feeds.symbols import SymbolMap

_MS = 1_000_000
_IGNORED = IgnoredEvent()


class BinanceParser:
    """Parse one websocket frame into events. O(levels in the frame); no I/O.

    Its only state is a ``FixedMemo``: Binance repeats the same price and quantity
    strings all the time, so most of a frame's conversions are dict hits.
    """

    __slots__ = ("symbols", "_fixed")

    def __init__(self, symbols: SymbolMap) -> None:
        self.symbols = symbols
        self._fixed = FixedMemo()

    def _levels(self, raw: list[list[str]]) -> tuple[Level, ...]:
        """``[["px","qty"], ...]`` -> fixed-point levels. O(k): ~2 dict hits per level."""
        known = self._fixed.values.get
        miss = self._fixed.miss
        levels: list[Level] = []
        append = levels.append
        for level in raw:
            px = known(level[0])
            if px is None:
                px = miss(level[0])
            qty = known(level[1])
            if qty is None:
                qty = miss(level[1])
            append((px, qty))
        return tuple(levels)

    def parse(self, frame: str | bytes) -> list[FeedEvent]:
        return parse_object(frame, "Binance", self._message)

    def _message(self, message: dict[str, Any]) -> list[FeedEvent]:
        data = message.get("data", message) if "stream" in message else message
        return [self._event(data)]

    def _event(self, data: dict[str, Any]) -> FeedEvent:
        kind = data.get("e")
        if kind == "depthUpdate":
            instrument = self.symbols.instrument(data["s"])
            if instrument is None:
                return _IGNORED
            prev = data.get("pu")
            return BookDeltaEvent(
                instrument,
                self._levels(data["b"]),
                self._levels(data["a"]),
                first_id=int(data["U"]),
                last_id=int(data["u"]),
                prev_id=None if prev is None else int(prev),
                ts_event=int(data["E"]) * _MS,
            )
        if kind == "bookTicker" or (kind is None and "u" in data and "A" in data):
            instrument = self.symbols.instrument(data["s"])
            if instrument is None:
                return _IGNORED
            fixed = self._fixed.parse
            return TopOfBookEvent(
                instrument,
                fixed(data["b"]),
                fixed(data["B"]),
                fixed(data["a"]),
                fixed(data["A"]),
                update_id=int(data["u"]),
                ts_event=int(data.get("E", 0)) * _MS,
            )
        if kind == "serverShutdown":
            return VenueErrorEvent("server shutdown announced", reconnect=True)
        if "result" in data and "id" in data:
            return ControlEvent(f"reply to request {data['id']}: {data['result']!r}")
        if "code" in data and "msg" in data:
            return VenueErrorEvent(f"Binance error {data['code']}: {data['msg']}")
        if kind is not None:
            return _IGNORED  # trades, klines, aggTrades: other streams of the same connection
        raise ValueError("neither a depth update, a bookTicker nor a control reply")

    def parse_snapshot(self, instrument: str, body: bytes | str) -> BookSnapshotEvent:
        """The REST depth snapshot body. Raises ``ValueError`` if it is not one."""
        try:
            data = orjson.loads(body)
            return BookSnapshotEvent(
                instrument,
                self._levels(data["bids"]),
                self._levels(data["asks"]),
                update_id=int(data["lastUpdateId"]),
            )
        except (orjson.JSONDecodeError, LookupError, TypeError) as exc:
            raise ValueError(f"not a Binance depth snapshot: {frame_text(body)[:200]!r}") from exc
