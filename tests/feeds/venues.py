"""The venue table as the feed tests see it: how each simulated venue is run, and what
differs in what its runner must do.

``running_venue`` starts a venue of ``app.venues.VENUE_KINDS`` (its simulator, its
adapter over loopback, connected as the runtime connects it); ``EXPECTED`` states, per
venue id, the simulator settings the tests use and the venue's own answers (its error
text, how it sees a lost message, which counts its simulator keeps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.venues import VENUE_KINDS
from book.incidents import IncidentKind
from feeds.metadata import TradingStatus
from feeds.simulator.catalog import LISTINGS, SPELLING, simulated_symbols
from feeds.simulator.venue import LoopbackVenue
from feeds.symbols import SymbolMap
from feeds.venue import VenueAdapter
from tests.feeds import rig as rig_module

Rig = rig_module.Rig[Any, VenueAdapter]
Count = Callable[[Any, str], int]
"""A simulator's count about one of its symbols (simulator, venue symbol)."""


@dataclass(frozen=True)
class Expected:
    """How one venue's simulator is run, and what differs in what its runner must do."""

    levels: int = 30
    """Levels per side of each simulated book."""
    depth: int | None = None
    """Levels per side compared with the simulator's book (``None``: the whole book)."""
    simulator_options: Mapping[str, object] = field(default_factory=dict)
    error: str | None = None
    """The incident detail of the simulator's ``ERROR`` fault (if it has one)."""
    drop_seen_as: IncidentKind = IncidentKind.GAP
    """A lost book message: a sequence gap, or (no sequence numbers) a bad checksum."""
    checksummed: bool = False
    """Every book message carries a checksum: every published book is verified."""
    connection_sequence: bool = False
    """Messages are numbered per connection: one opened during a silence sees a gap."""
    snapshots_served: Count | None = None
    """Snapshots the simulator served a symbol (REST or in-band): one per (re)sync, or
    more where a REST snapshot turned out older than the stream and was fetched again."""
    subscriptions: Count | None = None
    """Connections subscribed to a symbol now."""
    sequence: Count | None = None
    """A symbol's current sequence number (for ``RESTART``)."""
    pongs_sent: Callable[[Any], int] | None = None
    """Replies the simulator sent to application pings."""


_BINANCE = Expected(snapshots_served=lambda simulator, symbol: simulator.snapshot_requests(symbol))
_BYBIT = Expected(
    levels=80,
    depth=50,
    error="Bybit subscribe failed: error:internal server error",
    subscriptions=lambda simulator, symbol: simulator.subscribers(f"orderbook.50.{symbol}"),
    sequence=lambda simulator, symbol: simulator.update_id(f"orderbook.50.{symbol}"),
)
EXPECTED: dict[str, Expected] = {
    "binance": _BINANCE,
    "binance-usdm": _BINANCE,
    "coinbase": Expected(
        simulator_options={"heartbeat_interval": 0.05},
        error="Coinbase error: internal error",
        connection_sequence=True,
        subscriptions=lambda simulator, symbol: simulator.subscribers(symbol),
    ),
    "kraken": Expected(
        depth=10,
        error="Kraken request failed: EGeneral:Internal error",
        drop_seen_as=IncidentKind.CHECKSUM,
        checksummed=True,
        snapshots_served=lambda simulator, symbol: simulator.snapshots_sent(symbol),
        pongs_sent=lambda simulator: simulator.pongs_sent,
    ),
    "okx": Expected(
        simulator_options={"push_interval": 0.02},
        error="OKX error 60012: Invalid request",
        checksummed=True,
        snapshots_served=lambda simulator, symbol: simulator.snapshots_sent(symbol),
        sequence=lambda simulator, symbol: simulator.seq_id(symbol),
        pongs_sent=lambda simulator: simulator.pongs_sent,
    ),
    "bybit": _BYBIT,
    "bybit-linear": _BYBIT,
}


def build_simulator(venue: str, **options: object) -> LoopbackVenue[Any]:
    """``venue``'s simulator (not started) with the tests' settings; ``options`` add to
    or override the venue's ``simulator_options``."""
    kind = VENUE_KINDS[venue]
    expected = EXPECTED[venue]
    factory: Callable[..., LoopbackVenue[Any]] = kind.simulator  # type: ignore[assignment]
    return factory(
        symbols=simulated_symbols(venue),
        updates_per_second=200,
        seed=7,
        levels=expected.levels,
        host="127.0.0.1",
        port=0,
        **{**expected.simulator_options, **options},
    )


def build_adapter(venue: str, simulator: LoopbackVenue[Any]) -> VenueAdapter:
    """An adapter of ``venue`` for every trading instrument its simulator lists (the
    catalog's), at the simulator's URLs."""
    kind = VENUE_KINDS[venue]
    spell = SPELLING[venue]
    trading = [row.canonical for row in LISTINGS[venue] if row.status is TradingStatus.TRADING]
    symbols = SymbolMap(venue, {canonical: spell(canonical) for canonical in trading})
    return kind.adapter(symbols, *kind.sim_endpoints(simulator))


def running_venue(
    venue: str, simulator_options: Mapping[str, object] | None = None, /, **adapter_settings: object
) -> contextlib.AbstractAsyncContextManager[Rig]:
    """``venue``'s simulator (with ``simulator_options``) and runners over loopback,
    every book live; ``adapter_settings`` override the adapters' attributes."""
    expected = EXPECTED[venue]
    return rig_module.running_rig(
        build_simulator(venue, **(simulator_options or {})),
        lambda simulator: build_adapter(venue, simulator),
        None,
        expected.depth or expected.levels,
        **adapter_settings,
    )


def books(rig: Rig) -> dict[str, str]:
    """The rig's instruments -> their venue symbols."""
    symbols = rig.adapters[0].symbols
    return {name: symbols.venue_symbol(name) for name in rig.instruments}
