"""An unmodified third-party exchange client (ccxt, its ``pro`` websocket order books)
given only a simulator's URLs: it loads the markets from the simulator's metadata and
keeps a book whose best bid and ask equal marketcast's for the same updates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt.pro as ccxtpro
import pytest

from app.settings import VenueSettings
from app.venues import build_adapter, build_simulator, native_symbols, simulator_endpoints
from book.fixed import format_fixed
from feeds.simulator.venue import LoopbackVenue
from tests.feeds import rig as rig_module
from tests.feeds.rig import books_equal_simulator
from tests.waiting import eventually

CLIENTS = {
    "binance": ("binance", {"fetchMarkets": {"types": ["spot"]}}),
    "okx": ("okx", {"fetchMarkets": {"types": ["spot", "swap"]}}),
    "bybit": ("bybit", {"fetchMarkets": {"types": ["spot"]}}),
}
"""Venue id -> (ccxt exchange class, options: the market types the simulator lists)."""
ROUNDS = 3


def pointed_at(urls: Any, http_url: str, ws_url: str) -> Any:
    """ccxt's ``urls["api"]`` with every URL's scheme and host replaced by the
    simulator's (paths kept): the only thing the client is told."""
    if isinstance(urls, dict):
        return {key: pointed_at(value, http_url, ws_url) for key, value in urls.items()}
    if isinstance(urls, str) and "://" in urls:
        parts = urlsplit(urls)
        base = urlsplit(ws_url if parts.scheme.startswith("ws") else http_url)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, parts.fragment))
    return urls


@contextlib.asynccontextmanager
async def ccxt_client(venue: str, simulator: LoopbackVenue[Any]) -> AsyncIterator[Any]:
    name, options = CLIENTS[venue]
    exchange = getattr(ccxtpro, name)({"options": options})
    exchange.urls["api"] = pointed_at(exchange.urls["api"], simulator.rest_url, simulator.ws_url)
    try:
        yield exchange
    finally:
        await exchange.close()


@pytest.mark.parametrize("venue", list(CLIENTS))
async def test_ccxt_loads_markets_and_keeps_the_same_best_bid_and_ask(venue: str) -> None:
    settings = VenueSettings(id=venue, symbols=native_symbols(venue, ["BTC-USDT"]), simulate=True)
    simulator = build_simulator(venue, updates_per_second=100, seed=2)
    instrument = f"{venue}:BTC-USDT"

    def adapter(sim: LoopbackVenue[Any]) -> Any:
        return build_adapter(settings, *simulator_endpoints(settings, sim))

    async with (
        rig_module.running_rig(simulator, adapter, [instrument], 10) as rig,
        ccxt_client(venue, simulator) as exchange,
    ):
        markets = await exchange.load_markets()
        assert markets["BTC/USDT"]["id"] == settings.symbols["BTC-USDT"]
        assert markets["BTC/USDT"]["precision"]["price"] == float(
            next(s.tick for s in simulator.listed if s.symbol == settings.symbols["BTC-USDT"])
        )
        latest: list[Any] = []

        async def watch() -> None:
            while True:
                latest.append(await exchange.watch_order_book("BTC/USDT"))

        watcher = asyncio.create_task(watch())
        try:
            for _ in range(ROUNDS):
                simulator.resume()
                seen = len(latest)
                await eventually(lambda seen=seen: len(latest) > seen + 5, "ccxt book updates")
                await books_equal_simulator(rig, {instrument: settings.symbols["BTC-USDT"]}, 10)
                ours = rig.registry.get(instrument)
                assert ours is not None and ours.bid is not None and ours.ask is not None
                expected = (float(format_fixed(ours.bid)), float(format_fixed(ours.ask)))

                def theirs() -> tuple[float, float]:
                    book = latest[-1]
                    return book["bids"][0][0], book["asks"][0][0]

                await eventually(lambda want=expected: theirs() == want, "ccxt's best bid/ask")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
