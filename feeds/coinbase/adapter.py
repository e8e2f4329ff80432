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
from feeds.symbols import SymbolMap
from feeds.sync import BookSync
from feeds.venue import IdleProbe, VenueAdapter

COINBASE_WS = "wss://advanced-trade-ws.coinbase.com"


class CoinbaseAdapter(VenueAdapter):
    """Coinbase's protocol; each connection's ``sequence_num`` is checked by its own
    parser (``new_parser``), so a rotation's two connections never mix their numbers."""

    silence_timeout = 3.0  # heartbeats arrive every second
    idle_probe = IdleProbe.NONE
    max_instruments_per_connection = 1

    def __init__(self, symbols: SymbolMap, *, ws_url: str | None = None) -> None:
        self.venue = symbols.venue
        self.symbols = symbols
        self.ws_url = (ws_url or COINBASE_WS).rstrip("/")

    def stream_url(self, instruments: Sequence[str]) -> str:
        return self.ws_url

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

    def new_parser(self) -> CoinbaseParser:
        """One connection's parser: it checks that connection's ``sequence_num``."""
        return CoinbaseParser(self.symbols)

    def new_sync(self, instrument: str, *, capture_depth: int) -> BookSync:
        return CoinbaseBookSync(instrument, capture_depth=capture_depth)


def _request(kind: str, channel: str, products: list[str]) -> str:
    return orjson.dumps({"type": kind, "product_ids": products, "channel": channel}).decode()
