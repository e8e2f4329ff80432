"""Binance spot and USD-M futures: combined diff-depth + bookTicker streams, REST snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from feeds.binance.parser import BinanceParser
from feeds.binance.sync import BinanceDepthSync
from feeds.events import BookSnapshotEvent
from feeds.symbols import SymbolMap
from feeds.sync import BookSync
from feeds.venue import VenueAdapter

SPOT_WS = "wss://stream.binance.com:9443"
SPOT_REST = "https://api.binance.com"
USDM_WS = "wss://fstream.binance.com"
USDM_REST = "https://fapi.binance.com"


class BinanceAdapter(VenueAdapter):
    """``futures=False``: spot (``/api/v3/depth``); ``True``: USD-M (``/fapi/v1/depth``)."""

    rest_snapshots = True
    max_connection_age = 23.5 * 3600  # Binance closes connections after 24 h
    max_instruments_per_connection = 512  # two streams each; Binance allows 1024

    def __init__(
        self,
        symbols: SymbolMap,
        *,
        futures: bool = False,
        ws_base: str | None = None,
        rest_base: str | None = None,
        depth_stream: str = "depth@100ms",
        snapshot_limit: int = 1000,
    ) -> None:
        self.venue = symbols.venue
        self.symbols = symbols
        self.futures = futures
        self.ws_base = (ws_base or (USDM_WS if futures else SPOT_WS)).rstrip("/")
        self.rest_base = (rest_base or (USDM_REST if futures else SPOT_REST)).rstrip("/")
        self.depth_stream = depth_stream
        self.snapshot_limit = snapshot_limit
        self.snapshot_weight = _depth_weight(snapshot_limit, futures=futures)
        self.rest_weight_per_minute = 2400.0 if futures else 6000.0
        self._snapshots = BinanceParser(symbols)
        """Parses REST snapshots (they belong to no connection)."""

    def stream_url(self, instruments: Sequence[str]) -> str:
        streams: list[str] = []
        for instrument in instruments:
            native = self.symbols.venue_symbol(instrument).lower()
            streams += [f"{native}@{self.depth_stream}", f"{native}@bookTicker"]
        return f"{self.ws_base}/stream?streams={'/'.join(streams)}"

    def new_parser(self) -> BinanceParser:
        return BinanceParser(self.symbols)

    def new_sync(self, instrument: str, *, capture_depth: int) -> BookSync:
        return BinanceDepthSync(instrument, futures=self.futures, capture_depth=capture_depth)

    def snapshot_url(self, instrument: str) -> str:
        path = "/fapi/v1/depth" if self.futures else "/api/v3/depth"
        native = self.symbols.venue_symbol(instrument)
        return f"{self.rest_base}{path}?symbol={native}&limit={self.snapshot_limit}"

    def parse_snapshot(self, instrument: str, body: bytes | str) -> BookSnapshotEvent:
        return self._snapshots.parse_snapshot(instrument, body)

    def snapshot_instrument(self, url: str) -> str | None:
        symbol = parse_qs(urlsplit(url).query).get("symbol", [""])[0]
        return self.symbols.instrument(symbol.upper())


def _depth_weight(limit: int, *, futures: bool) -> float:
    """Request weight of a depth snapshot (Binance's published weight tables)."""
    if futures:
        return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
