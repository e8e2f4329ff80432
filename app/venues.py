"""Venue ids -> feed adapters and built-in simulators."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from app.exceptions import ConfigError
from app.settings import SimulatorSettings, VenueSettings
from feeds.binance.adapter import BinanceAdapter
from feeds.simulator.binance import DEFAULT_SYMBOLS, BinanceSpotSimulator
from feeds.simulator.market import SimSymbol
from feeds.symbols import DiscoveringSymbolMap, SymbolMap, split_concatenated
from feeds.venue import VenueAdapter


class SimulatedVenue(Protocol):
    @property
    def ws_url(self) -> str: ...

    @property
    def rest_url(self) -> str: ...


def build_adapter(venue: VenueSettings, ws_url: str | None, rest_url: str | None) -> VenueAdapter:
    adapter = _adapter(venue, ws_url, rest_url)
    if venue.instrument_silence_seconds:
        adapter.instrument_silence_timeout = venue.instrument_silence_seconds
    return adapter


def _adapter(venue: VenueSettings, ws_url: str | None, rest_url: str | None) -> VenueAdapter:
    symbols = SymbolMap(venue.id, venue.symbols)
    kind = venue.adapter_kind
    if kind in ("binance", "binance-usdm"):
        return BinanceAdapter(
            symbols, futures=kind == "binance-usdm", ws_base=ws_url, rest_base=rest_url
        )
    raise ConfigError(f"venue {venue.id!r}: no feed handler for kind {kind!r}")


def replay_adapter(venue: str) -> VenueAdapter:
    """An adapter for replaying a recording of ``venue``: it learns symbols as they come."""
    if venue in ("binance", "binance-usdm"):
        futures = venue == "binance-usdm"
        suffix = "-PERP" if futures else ""
        symbols = DiscoveringSymbolMap(venue, lambda native: split_concatenated(native) + suffix)
        return BinanceAdapter(symbols, futures=futures)
    raise ConfigError(f"no replay handler for venue {venue!r}; known: {', '.join(REPLAY_VENUES)}")


REPLAY_VENUES = ("binance", "binance-usdm")


def guess_venue(path: str) -> str | None:
    """The venue of a recording, from the sample-data file naming."""
    name = path.replace("\\", "/").lower()
    if "binance_futures" in name or "/usdm/" in name:
        return "binance-usdm"
    if "binance" in name:
        return "binance"
    for venue in ("kraken", "okx", "coinbase", "bybit"):
        if venue in name:
            return venue
    return None


def simulator_for(
    venue: VenueSettings, settings: SimulatorSettings
) -> AbstractAsyncContextManager[SimulatedVenue]:
    kind = venue.adapter_kind
    if kind == "binance":
        return BinanceSpotSimulator(
            symbols=[sim_symbol(native) for native in venue.symbols.values()],
            updates_per_second=settings.updates_per_second,
            seed=settings.seed if settings.seed is not None else 0,
        )
    raise ConfigError(f"venue {venue.id!r}: no simulator for kind {kind!r}")


_KNOWN = {spec.symbol: spec for spec in DEFAULT_SYMBOLS}


def sim_symbol(native: str) -> SimSymbol:
    """A simulated instrument: realistic for the well-known ones, generic otherwise."""
    known = _KNOWN.get(native)
    if known is not None:
        return known
    return SimSymbol(native, price="100.00", tick="0.01", lot="0.001", mean_qty="10")
