"""Bybit v5 public spot and linear (USDT/USDC perpetual) orderbooks, snapshots in-band.

Sent after connecting, topics ten per request (spot's limit), and every 20 s::

    {"op":"subscribe","args":["orderbook.50.BTCUSDT","orderbook.50.ETHUSDT"]}
    {"op":"ping"}

Resyncing an instrument unsubscribes and subscribes its topic again; Bybit answers a
subscription with a fresh snapshot. ``u`` is per topic, so one connection carries many.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import orjson

from feeds.bybit.parser import BybitParser
from feeds.bybit.sync import BybitBookSync
from feeds.symbols import SymbolMap
from feeds.sync import BookSync
from feeds.venue import IdleProbe, VenueAdapter

BYBIT_WS = "wss://stream.bybit.com"
DEPTHS = (1, 50, 200, 1000)
"""Orderbook depths Bybit serves on spot and linear."""
TOPICS_PER_REQUEST = 10
_PING = orjson.dumps({"op": "ping"}).decode()


class BybitCategory(StrEnum):
    """The public stream a venue id reads (``/v5/public/<category>``)."""

    SPOT = "spot"
    LINEAR = "linear"


class BybitAdapter(VenueAdapter):
    """``category`` SPOT for venue ``bybit``, LINEAR for ``bybit-linear``; ``depth`` levels."""

    app_ping_interval = 20.0  # Bybit asks for a ping every 20 s
    idle_probe = IdleProbe.APP  # {"op":"ping"} is answered with a pong frame

    def __init__(
        self,
        symbols: SymbolMap,
        *,
        category: BybitCategory = BybitCategory.SPOT,
        ws_base: str | None = None,
        depth: int = 50,
    ) -> None:
        if depth not in DEPTHS:
            raise ValueError(f"Bybit orderbook depth must be one of {DEPTHS}, got {depth}")
        self.venue = symbols.venue
        self.symbols = symbols
        self.category = category
        self.ws_base = (ws_base or BYBIT_WS).rstrip("/")
        self.depth = depth

    def topic(self, instrument: str) -> str:
        """``"orderbook.50.BTCUSDT"``."""
        return f"orderbook.{self.depth}.{self.symbols.venue_symbol(instrument)}"

    def stream_url(self, instruments: Sequence[str]) -> str:
        return f"{self.ws_base}/v5/public/{self.category}"

    def subscribe_frames(self, instruments: Sequence[str]) -> list[str]:
        topics = [self.topic(name) for name in instruments]
        return [
            _request("subscribe", topics[i : i + TOPICS_PER_REQUEST])
            for i in range(0, len(topics), TOPICS_PER_REQUEST)
        ]

    def resubscribe_frames(self, instrument: str) -> list[str]:
        topics = [self.topic(instrument)]
        return [_request("unsubscribe", topics), _request("subscribe", topics)]

    def app_ping_frame(self) -> str:
        return _PING

    def new_parser(self) -> BybitParser:
        return BybitParser(self.symbols)

    def new_sync(self, instrument: str, *, capture_depth: int) -> BookSync:
        return BybitBookSync(instrument, capture_depth=capture_depth)


def _request(op: str, topics: list[str]) -> str:
    return orjson.dumps({"op": op, "args": topics}).decode()
