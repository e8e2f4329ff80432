"""Coinbase Advanced Trade market data: ``level2`` books kept alive by ``heartbeats``.

Sent after connecting (within 5 s, or Coinbase closes the connection; one channel per
message)::

    {"type":"subscribe","product_ids":["BTC-USD"],"channel":"level2"}
    {"type":"subscribe","channel":"heartbeats"}

Resyncing a product unsubscribes and subscribes its ``level2`` again; a fresh snapshot
follows. ``sequence_num`` counts every message of a connection, so one connection
carries one product: a lost message then resyncs exactly that product.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from feeds.coinbase.parser import CoinbaseParser
from feeds.coinbase.sync import CoinbaseBookSync
from feeds.events import FeedEvent
from feeds.symbols import SymbolMap
from feeds.sync import BookSync
from feeds.venue import IdleProbe, VenueAdapter

COINBASE_WS = "wss://advanced-trade-ws.coinbase.com"


class CoinbaseAdapter(VenueAdapter):
    """One connection's protocol state: make one adapter per connection (parser state)."""

    silence_timeout = 3.0  # heartbeats arrive every second
    idle_probe = IdleProbe.NONE
    max_instruments_per_connection = 1

    def __init__(self, symbols: SymbolMap, *, ws_url: str | None = None) -> None:
        self.venue = symbols.venue
        self.symbols = symbols
        self.ws_url = (ws_url or COINBASE_WS).rstrip("/")
        self._parser = CoinbaseParser(symbols)

    def stream_url(self, instruments: Sequence[str]) -> str:
        return self.ws_url

    def connection_started(self) -> None:
        self._parser.reset()

    def subscribe_frames(self, instruments: Sequence[str]) -> list[str]:
        products = [self.symbols.venue_symbol(name) for name in instruments]
        return [
            _request("subscribe", "level2", products),
            orjson.dumps({"type": "subscribe", "channel": "heartbeats"}).decode(),
        ]

    def resubscribe_frames(self, instrument: str) -> list[str]:
        products = [self.symbols.venue_symbol(instrument)]
        return [
            _request("unsubscribe", "level2", products),
            _request("subscribe", "level2", products),
        ]

    def parse(self, frame: str | bytes) -> list[FeedEvent]:
        return self._parser.parse(frame)

    def new_sync(self, instrument: str, *, capture_depth: int) -> BookSync:
        return CoinbaseBookSync(instrument, capture_depth=capture_depth)


def _request(kind: str, channel: str, products: list[str]) -> str:
    return orjson.dumps({"type": kind, "product_ids": products, "channel": channel}).decode()
