"""The runner-vs-simulator rig every venue's runner tests share.

A simulated venue on loopback, ``FeedRunner``s connected to it over real sockets, and a
``BookRegistry`` whose listeners record what the runners published (``Observed``).
``running_rig`` connects a venue's instruments as the runtime does (one runner per
connection, as many instruments on each as the venue allows); ``observed_registry``,
``feed_runner`` and ``running`` are its parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import pytest

from app.runtime import connection_groups
from book.incidents import FeedIncident, IncidentKind, IncidentListener
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from feeds.backoff import Backoff
from feeds.runner import FeedRunner
from feeds.simulator.venue import LoopbackVenue
from feeds.venue import IdleProbe, VenueAdapter
from tests.waiting import eventually

SimulatorT = TypeVar("SimulatorT", bound=LoopbackVenue[Any])
AdapterT = TypeVar("AdapterT", bound=VenueAdapter)


@dataclass
class Observed:
    """What the registry told its listeners, per instrument, and the runner's incidents."""

    states: dict[str, list[InstrumentState]] = field(default_factory=lambda: defaultdict(list))
    published: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    incidents: list[FeedIncident] = field(default_factory=list)
    log: list[tuple[str, object]] = field(default_factory=list)
    """(instrument, state or "book") in the order it happened."""

    def on_status(self, status: InstrumentStatus) -> None:
        self.states[status.instrument].append(status.state)
        self.log.append((status.instrument, status.state))

    def on_snapshot(self, snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        self.published[snapshot.instrument] += 1
        self.seqs[snapshot.instrument].append(snapshot.seq)
        self.log.append((snapshot.instrument, "book"))

    def kinds(self, instrument: str | None = None) -> list[IncidentKind]:
        return [i.kind for i in self.incidents if instrument is None or i.instrument == instrument]

    def books_while_stale(self, stale: str, other: str) -> int:
        """Books of ``other`` published between ``stale`` going stale and live again."""
        during, count = False, 0
        for instrument, what in self.log:
            if instrument == stale and what in (InstrumentState.STALE, InstrumentState.LIVE):
                during = what is InstrumentState.STALE
            elif instrument == other and what == "book" and during:
                count += 1
        return count


@dataclass
class Rig(Generic[SimulatorT, AdapterT]):
    simulator: SimulatorT
    adapters: list[AdapterT]
    runners: list[FeedRunner]
    """One runner (one connection) per group of instruments, ``adapters[i]`` its adapter."""
    registry: BookRegistry
    seen: Observed
    instruments: tuple[str, ...]
    """The instruments the rig waited to be live."""
    incidents: list[list[FeedIncident]]
    """Each runner's own incidents (connection ones have no instrument)."""

    @property
    def runner(self) -> FeedRunner:
        """The runner of a venue connected over one connection."""
        (runner,) = self.runners
        return runner

    @property
    def adapter(self) -> AdapterT:
        (adapter,) = self.adapters
        return adapter

    def kinds(self, runner: int) -> list[IncidentKind]:
        """The kinds of runner ``runner``'s incidents, in order."""
        return [incident.kind for incident in self.incidents[runner]]

    def verified(self) -> dict[str, int]:
        """Messages each book's sync verified (checksums) on the current connections."""
        verified: dict[str, int] = {}
        for runner in self.runners:
            dispatcher = runner.dispatcher
            assert dispatcher is not None
            verified |= {name: sync.verified for name, sync in dispatcher.syncs.items()}
        return verified


def observed_registry() -> tuple[BookRegistry, Observed]:
    """A registry whose status and snapshot listeners record into the ``Observed``."""
    registry = BookRegistry()
    seen = Observed()
    registry.on_status(seen.on_status)
    registry.on_snapshot(seen.on_snapshot)
    return registry, seen


class IncidentsApart:
    """A sink that writes books and states to ``registry`` and hands incidents to
    ``on_incident`` (one runner's incidents, apart from other runners')."""

    def __init__(self, registry: BookRegistry, on_incident: IncidentListener) -> None:
        self.add_instrument = registry.add_instrument
        self.publish = registry.publish
        self.set_status = registry.set_status
        self.incident = on_incident


def feed_runner(
    adapter: VenueAdapter,
    registry: BookRegistry,
    on_incident: IncidentListener,
    *,
    capture_depth: int,
    instruments: Sequence[str] | None = None,
) -> FeedRunner:
    """A runner that reconnects within tens of milliseconds."""
    return FeedRunner(
        adapter,
        sink=IncidentsApart(registry, on_incident),
        instruments=instruments,
        capture_depth=capture_depth,
        backoff=Backoff(initial=0.01, maximum=0.05),
    )


@contextlib.asynccontextmanager
async def running(
    runners: Iterable[FeedRunner], registry: BookRegistry, live: Iterable[str]
) -> AsyncIterator[None]:
    """Run the ``runners`` until every ``live`` book is live; cancel them on exit."""
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    try:
        await eventually(lambda: all(map(registry.is_live, live)), "all live")
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with pytest.raises(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def running_rig(
    simulator: SimulatorT,
    adapter_factory: Callable[[SimulatorT], AdapterT],
    instruments: Sequence[str] | None = None,
    capture_depth: int = 10,
    /,
    **adapter_settings: object,
) -> AsyncIterator[Rig[SimulatorT, AdapterT]]:
    """Start ``simulator``, connect every instrument of ``adapter_factory(simulator)``
    over loopback as the runtime does (a runner and adapter per connection; books of
    ``capture_depth`` levels) and wait until every one of ``instruments`` (default: all)
    is live. ``adapter_settings`` override the adapters' attributes (timeouts, pings,
    connection age) before the start."""
    async with simulator:
        registry, seen = observed_registry()
        groups = connection_groups(adapter_factory(simulator))
        adapters = [adapter_factory(simulator) for _ in groups]
        incidents: list[list[FeedIncident]] = [[] for _ in groups]
        runners: list[FeedRunner] = []
        for adapter, group, own in zip(adapters, groups, incidents, strict=True):
            for name, value in adapter_settings.items():
                setattr(adapter, name, value)

            def on_incident(incident: FeedIncident, own: list[FeedIncident] = own) -> None:
                own.append(incident)
                seen.incidents.append(incident)

            runner = feed_runner(
                adapter, registry, on_incident, capture_depth=capture_depth, instruments=group
            )
            runners.append(runner)
        live = tuple(adapters[0].symbols.instruments() if instruments is None else instruments)
        async with running(runners, registry, live):
            yield Rig(simulator, adapters, runners, registry, seen, live, incidents)


class Books(Protocol):
    @property
    def simulator(self) -> LoopbackVenue[Any]: ...

    @property
    def registry(self) -> BookRegistry: ...


async def books_equal_simulator(
    rig: Books, venue_symbols: Mapping[str, str], depth: int | None
) -> None:
    """Pause the market and wait until the book of every instrument of ``venue_symbols``
    (instrument id -> venue symbol) equals the venue's true top ``depth`` (None: whole)."""
    rig.simulator.pause()

    def matches() -> bool:
        for instrument, symbol in venue_symbols.items():
            snap = rig.registry.get(instrument)
            truth = rig.simulator.book(symbol, depth)
            if snap is None or (snap.bids, snap.asks) != (truth.bids, truth.asks):
                return False
        return True

    await eventually(matches, "books equal the simulator's")


async def silence_venue(
    rig: Rig[Any, Any], *, watchdog: float = 0.3, seconds: float = 1.0
) -> float:
    """Lower the runners' silence timeout to ``watchdog`` s and stop their idle probes (a
    silent simulator still answers pings: without probes its silence is that of a dead
    connection), wait until frames flow on each, then make the venue send nothing for
    ``seconds``: the watchdogs must drop the connections. Returns the
    ``time.monotonic()`` by which the venue is sending again."""
    for runner in rig.runners:
        runner.adapter.silence_timeout = watchdog
        runner.adapter.idle_probe = IdleProbe.NONE
    frames = [runner.counters.frames for runner in rig.runners]
    await eventually(
        lambda: all(
            runner.counters.frames > before + 1
            for runner, before in zip(rig.runners, frames, strict=True)
        ),
        "frames flow on every connection",
    )
    rig.simulator.go_silent(seconds)
    return time.monotonic() + seconds
