"""Every venue marketcast speaks, in one table: adapters, symbol spelling, simulators.

A ``VenueKind`` says how to build the feed adapter of a venue id, how the venue spells
a canonical symbol (and back, for replaying recordings), and which built-in simulator
stands in for it in the offline demo.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from app.exceptions import ConfigError
from feeds.binance import metadata as binance_meta
from feeds.binance.adapter import SPOT_REST, USDM_REST, BinanceAdapter
from feeds.bybit import metadata as bybit_meta
from feeds.bybit.adapter import BybitAdapter, BybitCategory
from feeds.coinbase import metadata as coinbase_meta
from feeds.coinbase.adapter import CoinbaseAdapter
from feeds.kraken import metadata as kraken_meta
from feeds.kraken.adapter import WS_V2 as KRAKEN_WS
from feeds.kraken.adapter import KrakenAdapter, canonical_symbol, native_symbol
from feeds.metadata import MetadataPage, MetadataRequest
from feeds.okx import metadata as okx_meta
from feeds.okx.adapter import OkxAdapter, okx_canonical, okx_inst_id
from feeds.okx.channels import OkxChannel, OkxCredentials
from feeds.simulator import binance as binance_sim
from feeds.simulator import bybit as bybit_sim
from feeds.simulator import coinbase as coinbase_sim
from feeds.simulator import kraken as kraken_sim
from feeds.simulator import okx as okx_sim
from feeds.simulator.catalog import generic_symbol, simulated_symbols
from feeds.simulator.market import SimSymbol
from feeds.simulator.venue import LoopbackVenue
from feeds.symbols import DiscoveringSymbolMap, SymbolMap, split_concatenated
from feeds.venue import VenueAdapter

if TYPE_CHECKING:
    from app.settings import SimulatorSettings, VenueSettings

Endpoints = tuple[str | None, str | None]
"""(websocket, REST) base URLs of a venue; ``None`` = the exchange's own."""


class AdapterFactory(Protocol):
    """Builds one connection's feed adapter: symbols, websocket and REST base URLs
    (``None``: the exchange's own) and the venue's settings (channel, credentials)."""

    def __call__(
        self,
        symbols: SymbolMap,
        ws_url: str | None,
        rest_url: str | None,
        venue: VenueSettings | None = None,
        /,
    ) -> VenueAdapter: ...


class SimulatorFactory(Protocol):
    """Builds a venue's loopback simulator (not started)."""

    def __call__(
        self,
        *,
        symbols: Sequence[SimSymbol] | None,
        updates_per_second: float,
        seed: int,
        host: str,
        port: int,
    ) -> LoopbackVenue[Any]: ...


@dataclass(frozen=True, slots=True)
class VenueMetadata:
    """Where a venue publishes its instrument metadata and how to read it.

    REST venues: ``requests`` below ``rest_base`` (or the configured ``rest_url``), each
    response parsed by ``parse`` (which may ask for a next page). Websocket venues
    (Kraken): ``ws_frame`` sent on a connection to ``rest_base`` (or the configured
    ``ws_url``), frames parsed until ``parse`` returns the snapshot.
    """

    rest_base: str
    parse: Callable[[bytes | str], MetadataPage | None]
    requests: tuple[MetadataRequest, ...] = ()
    ws_frame: str | None = None


@dataclass(frozen=True, slots=True)
class VenueKind:
    """How to speak one venue. ``adapter(symbols, ws_url, rest_url)`` builds a feed adapter
    (one per connection); ``simulator(symbols=.., updates_per_second=.., seed=.., host=..,
    port=..)`` a loopback stand-in whose endpoints ``sim_endpoints`` gives."""

    native: Callable[[str], str]
    canonical: Callable[[str], str]
    adapter: AdapterFactory
    simulator: SimulatorFactory | None
    sim_endpoints: Callable[[Any], Endpoints]
    metadata: VenueMetadata
    channels: tuple[str, ...] = ()
    """Book channels ``[[venues]].channel`` may choose (the first is the default)."""
    replay_adapter: Callable[[SymbolMap], VenueAdapter] | None = None


def _concatenated(symbol: str) -> str:
    return symbol.removesuffix("-PERP").replace("-", "")


def _perp(canonical: Callable[[str], str]) -> Callable[[str], str]:
    return lambda native: canonical(native) + "-PERP"


def _base_urls(simulator: Any) -> Endpoints:
    return simulator.ws_url, simulator.rest_url


def _ws_base(simulator: Any) -> Endpoints:
    return simulator.ws_url, simulator.rest_url


VENUE_KINDS: dict[str, VenueKind] = {
    "binance": VenueKind(
        native=_concatenated,
        canonical=split_concatenated,
        adapter=lambda s, ws, rest, _=None: BinanceAdapter(s, ws_base=ws, rest_base=rest),
        simulator=binance_sim.BinanceSimulator,
        sim_endpoints=_base_urls,
        metadata=VenueMetadata(
            SPOT_REST, binance_meta.parse_exchange_info, (binance_meta.SPOT_REQUEST,)
        ),
    ),
    "binance-usdm": VenueKind(
        native=_concatenated,
        canonical=_perp(split_concatenated),
        adapter=lambda s, ws, rest, _=None: BinanceAdapter(
            s, futures=True, ws_base=ws, rest_base=rest
        ),
        simulator=partial(binance_sim.BinanceSimulator, futures=True),
        sim_endpoints=_base_urls,
        metadata=VenueMetadata(
            USDM_REST, binance_meta.parse_exchange_info, (binance_meta.USDM_REQUEST,)
        ),
    ),
    "coinbase": VenueKind(
        native=str,
        canonical=str,
        adapter=lambda s, ws, rest, _=None: CoinbaseAdapter(s, ws_url=ws),
        simulator=coinbase_sim.CoinbaseSimulator,
        sim_endpoints=_ws_base,
        metadata=VenueMetadata(
            coinbase_meta.REST_BASE, coinbase_meta.parse_products, (coinbase_meta.REQUEST,)
        ),
    ),
    "kraken": VenueKind(
        native=native_symbol,
        canonical=canonical_symbol,
        adapter=lambda s, ws, rest, _=None: KrakenAdapter(s, ws_url=ws or KRAKEN_WS),
        simulator=kraken_sim.KrakenSimulator,
        sim_endpoints=lambda sim: (sim.v2_url, None),
        metadata=VenueMetadata(
            KRAKEN_WS, kraken_meta.parse_instrument_frame, ws_frame=kraken_meta.SUBSCRIBE_FRAME
        ),
        replay_adapter=lambda s: KrakenAdapter(s, learn_precision=False),
    ),
    "okx": VenueKind(
        native=okx_inst_id,
        canonical=okx_canonical,
        adapter=lambda s, ws, rest, venue=None: _okx_adapter(s, ws, venue),
        channels=tuple(OkxChannel),
        simulator=okx_sim.OkxSimulator,
        sim_endpoints=_ws_base,
        metadata=VenueMetadata(okx_meta.REST_BASE, okx_meta.parse_instruments, okx_meta.REQUESTS),
    ),
    "bybit": VenueKind(
        native=_concatenated,
        canonical=split_concatenated,
        adapter=lambda s, ws, rest, _=None: BybitAdapter(
            s, category=BybitCategory.SPOT, ws_base=ws
        ),
        simulator=partial(bybit_sim.BybitSimulator, category=BybitCategory.SPOT),
        sim_endpoints=_ws_base,
        metadata=VenueMetadata(
            bybit_meta.REST_BASE,
            bybit_meta.parse_instruments_info,
            (bybit_meta.first_request("spot"),),
        ),
    ),
    "bybit-linear": VenueKind(
        native=_concatenated,
        canonical=_perp(split_concatenated),
        adapter=lambda s, ws, rest, _=None: BybitAdapter(
            s, category=BybitCategory.LINEAR, ws_base=ws
        ),
        simulator=partial(bybit_sim.BybitSimulator, category=BybitCategory.LINEAR),
        sim_endpoints=_ws_base,
        metadata=VenueMetadata(
            bybit_meta.REST_BASE,
            bybit_meta.parse_instruments_info,
            (bybit_meta.first_request("linear"),),
        ),
    ),
}


def venue_kind(kind: str) -> VenueKind:
    try:
        return VENUE_KINDS[kind]
    except KeyError:
        known = ", ".join(VENUE_KINDS)
        raise ConfigError(f"unknown venue kind {kind!r}; known: {known}") from None


def native_symbols(kind: str, canonical: Sequence[str]) -> dict[str, str]:
    """The venue's usual spelling of canonical symbols (``BTC-USDT`` -> ``BTCUSDT``)."""
    spell = venue_kind(kind).native
    try:
        return {name: spell(name) for name in canonical}
    except ValueError as exc:
        raise ConfigError(f"{kind}: {exc}") from exc


def build_adapter(venue: VenueSettings, ws_url: str | None, rest_url: str | None) -> VenueAdapter:
    """A new adapter for one connection of ``venue`` (adapters hold per-connection state)."""
    adapter = venue_kind(venue.adapter_kind).adapter(
        SymbolMap(venue.id, venue.symbols), ws_url, rest_url, venue
    )
    if venue.instrument_silence_seconds:
        adapter.instrument_silence_timeout = venue.instrument_silence_seconds
    return adapter


def replay_adapter(venue: str, known: Mapping[str, str] | None = None) -> VenueAdapter:
    """An adapter for replaying a recording of ``venue``: it learns symbols as they come,
    named by ``known`` (venue symbol -> canonical, from recorded metadata) first."""
    kind = venue_kind(venue)
    symbols = DiscoveringSymbolMap(venue, kind.canonical, known=known)
    if kind.replay_adapter is not None:
        return kind.replay_adapter(symbols)
    return kind.adapter(symbols, None, None, None)


def _okx_adapter(symbols: SymbolMap, ws_url: str | None, venue: VenueSettings | None) -> OkxAdapter:
    """OKX on the venue's ``channel``, logged in when it names ``credentials_env``."""
    if venue is None:
        return OkxAdapter(symbols, ws_base=ws_url)
    credentials = None
    if venue.credentials_env:
        credentials = okx_credentials(venue.credentials_env, os.environ)
    try:
        return OkxAdapter(
            symbols,
            ws_base=ws_url,
            channel=OkxChannel(venue.channel or OkxChannel.BOOKS),
            credentials=credentials,
        )
    except ValueError as exc:
        raise ConfigError(f"venue {venue.id!r}: {exc}") from exc


def okx_credentials(prefix: str, environ: Mapping[str, str]) -> OkxCredentials:
    """The OKX API key in ``<prefix>_API_KEY``, ``_API_SECRET``, ``_API_PASSPHRASE``;
    ``ConfigError`` naming the variables that are not set (never their values)."""
    names = [f"{prefix}_API_KEY", f"{prefix}_API_SECRET", f"{prefix}_API_PASSPHRASE"]
    missing = [name for name in names if not environ.get(name)]
    if missing:
        raise ConfigError(f"OKX credentials: environment variable(s) {', '.join(missing)} not set")
    key, secret, passphrase = (environ[name] for name in names)
    return OkxCredentials(key, secret, passphrase)


def guess_venue(path: str) -> str | None:
    """The venue of a recording, from the sample-data file naming."""
    name = path.replace("\\", "/").lower()
    if "binance_futures" in name or "/usdm/" in name:
        return "binance-usdm"
    for venue in ("binance", "kraken", "okx", "coinbase", "bybit"):
        if venue in name:
            return venue
    return None


def simulated_venues() -> tuple[str, ...]:
    """The venue ids that have a built-in simulator."""
    return tuple(name for name, kind in VENUE_KINDS.items() if kind.simulator is not None)


def build_simulator(
    kind: str,
    *,
    natives: Sequence[str] | None = None,
    updates_per_second: float,
    seed: int,
    host: str = "127.0.0.1",
    port: int = 0,
) -> LoopbackVenue[Any]:
    """The (not started) simulator of venue kind ``kind``, serving the venue symbols
    ``natives`` (its usual symbols when ``None``). ``ConfigError`` if it has none."""
    venue = venue_kind(kind)
    if venue.simulator is None:
        raise ConfigError(f"no built-in simulator for {kind}")
    listed = {spec.symbol: spec for spec in simulated_symbols(kind)}
    symbols = (
        None
        if natives is None
        else [listed.get(native) or generic_symbol(native) for native in natives]
    )
    try:
        return venue.simulator(
            symbols=symbols,
            updates_per_second=updates_per_second,
            seed=seed,
            host=host,
            port=port,
        )
    except ValueError as exc:
        raise ConfigError(f"{kind} simulator: {exc}") from exc


def simulator_for(venue: VenueSettings, settings: SimulatorSettings) -> LoopbackVenue[Any]:
    """The loopback simulator standing in for ``venue`` (its symbols, the demo's rate)."""
    try:
        natives = list(venue.symbols.values())
        if venue.patterns:  # patterns choose among everything the simulator lists
            listed = [spec.symbol for spec in simulated_symbols(venue.adapter_kind)]
            natives = list(dict.fromkeys([*listed, *natives]))
        return build_simulator(
            venue.adapter_kind,
            natives=natives,
            updates_per_second=settings.updates_per_second,
            seed=settings.seed or 0,
        )
    except ConfigError as exc:
        raise ConfigError(f"venue {venue.id!r}: {exc}") from exc


def simulator_endpoints(venue: VenueSettings, simulator: Any) -> Endpoints:
    return venue_kind(venue.adapter_kind).sim_endpoints(simulator)
