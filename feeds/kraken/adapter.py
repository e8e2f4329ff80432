"""Kraken spot websocket v2: ``book`` channel with checksums, resync by resubscribing.

Frames sent (``req_id`` numbers the requests of one adapter)::

    {"method":"subscribe","params":{"channel":"instrument","snapshot":true},"req_id":1}
    {"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD","ETH/USD"],
     "depth":10,"snapshot":true},"req_id":2}
    {"method":"unsubscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10},
     "req_id":3}                                    (resync of one instrument: then subscribe)
    {"method":"ping","req_id":4}

Precision: the checksum needs each pair's price and quantity decimals. The adapter
starts from ``precisions`` (configuration; ``KNOWN_PRECISIONS`` fill the gaps) and, with
``learn_precision`` (the default), subscribes to Kraken's ``instrument`` channel, whose
snapshot states the current ``price_precision``/``qty_precision`` of every pair; what the
venue states replaces the configured value. A book whose precision is not known yet
is kept but not published until a message can be verified.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import orjson

from book.instruments import instrument_id
from feeds.kraken.checksum import Precision, PrecisionTable
from feeds.kraken.parser import KrakenParser
from feeds.kraken.sync import DEPTHS, KrakenBookSync
from feeds.symbols import SymbolMap
from feeds.sync import BookSync
from feeds.venue import IdleProbe, VenueAdapter

WS_V2 = "wss://ws.kraken.com/v2"

KNOWN_PRECISIONS: Mapping[str, Precision] = {
    "BTC-USD": Precision(price=1, qty=8),
    "ETH-USD": Precision(price=2, qty=8),
    "SOL-USD": Precision(price=2, qty=8),
}
"""Precisions Kraken's ``instrument`` channel stated for some pairs (canonical symbols);
used where nothing else says (replaying recordings). Live feeds learn current values."""


class KrakenAdapter(VenueAdapter):
    """Kraken spot v2 ``book`` at ``depth`` (10, 25, 100, 500 or 1000) per instrument.

    ``precisions`` maps canonical symbols (``"BTC-USD"``) to checksum precisions.
    Kraken sends a heartbeat about once a second when a connection has nothing else to
    send, so three quiet seconds mean the connection is dead; an application ping every
    ``ping_interval`` seconds keeps intermediaries from idling it out.
    """

    silence_timeout = 3.0
    idle_probe = IdleProbe.NONE  # heartbeats

    def __init__(
        self,
        symbols: SymbolMap,
        *,
        depth: int = 10,
        precisions: Mapping[str, Precision] | None = None,
        learn_precision: bool = True,
        ws_url: str = WS_V2,
        ping_interval: float = 15.0,
    ) -> None:
        if depth not in DEPTHS:
            raise ValueError(f"Kraken book depth must be one of {DEPTHS}, got {depth}")
        self.venue = symbols.venue
        self.symbols = symbols
        self.depth = depth
        self.learn_precision = learn_precision
        self.ws_url = ws_url
        self.app_ping_interval = ping_interval
        configured = {**KNOWN_PRECISIONS, **(precisions or {})}
        self.precisions = PrecisionTable(
            {instrument_id(self.venue, name): precision for name, precision in configured.items()}
        )
        self._request_ids = itertools.count(1)

    def stream_url(self, instruments: Sequence[str]) -> str:
        return self.ws_url

    def subscribe_frames(self, instruments: Sequence[str]) -> list[str]:
        frames: list[str] = []
        if self.learn_precision:
            frames.append(self._request("subscribe", {"channel": "instrument", "snapshot": True}))
        frames.append(self._book_request("subscribe", instruments))
        return frames

    def resubscribe_frames(self, instrument: str) -> list[str]:
        """Unsubscribe and subscribe again: Kraken then sends a fresh snapshot of that
        instrument only; the others' subscriptions are untouched."""
        return [
            self._book_request("unsubscribe", [instrument]),
            self._book_request("subscribe", [instrument]),
        ]

    def app_ping_frame(self) -> str | None:
        return orjson.dumps({"method": "ping", "req_id": next(self._request_ids)}).decode()

    def new_parser(self) -> KrakenParser:
        """What the venue states about precisions goes into the adapter's table, which
        every connection's parser and book syncs share (facts about the venue)."""
        return KrakenParser(self.symbols, self.precisions)

    def new_sync(self, instrument: str, *, capture_depth: int) -> BookSync:
        return KrakenBookSync(
            instrument, depth=self.depth, precisions=self.precisions, capture_depth=capture_depth
        )

    def _book_request(self, method: str, instruments: Sequence[str]) -> str:
        params: dict[str, object] = {
            "channel": "book",
            "symbol": [self.symbols.venue_symbol(name) for name in instruments],
            "depth": self.depth,
        }
        if method == "subscribe":
            params["snapshot"] = True
        return self._request(method, params)

    def _request(self, method: str, params: dict[str, object]) -> str:
        request = {"method": method, "params": params, "req_id": next(self._request_ids)}
        return orjson.dumps(request).decode()


def canonical_symbol(native: str) -> str:
    """Kraken v2 pair -> canonical symbol: ``"BTC/USD"`` -> ``"BTC-USD"``."""
    base, sep, quote = native.partition("/")
    if not sep or not base or not quote:
        raise ValueError(f"not a Kraken pair: {native!r}")
    return f"{base}-{quote}"


def native_symbol(symbol: str) -> str:
    """Canonical spot symbol -> Kraken v2 pair: ``"BTC-USD"`` -> ``"BTC/USD"``."""
    base, sep, quote = symbol.partition("-")
    if not sep or not base or not quote or "-" in quote:
        raise ValueError(f"not a spot symbol: {symbol!r}")
    return f"{base}/{quote}"
