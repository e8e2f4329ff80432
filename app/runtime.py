"""Wire the parts into one server process and run it until cancelled.

Start order: storage (open, then its flusher), the position book with the open
positions reloaded from storage (profit resumes for them), simulated venues if
configured, the subscription server, then the feeds. Shutdown is cancellation of the task group,
then a drain of the storage flusher, so every row already taken is written.

Roles (``app.roles``): ``all`` is this whole process; ``ingest`` is the same with the
feeds writing through the bus publisher and no positions; ``edge`` is ``serve_edge``.
Every book's and consolidated quote's ``seq`` starts at ``book.versions.seq_base()``, so
seqs keep growing across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from app.admin import FeedAdmin
from app.heap import HeapKeeper
from app.instruments import declare_halted, learn_instruments, rest_budget
from app.nodestate import NodeState, install_node_pages, node_server
from app.refresh import MetadataRefresher
from app.roles import IngestBus
from app.settings import Settings, VenueSettings
from app.storage import storage_backend
from app.venues import Endpoints, build_adapter, simulator_endpoints, simulator_for
from book.incidents import FeedIncident
from book.registry import BookRegistry
from book.sink import FeedSink
from book.snapshot import BookSnapshot
from book.versions import seq_base
from feeds.ratelimit import WeightLimiter
from feeds.runner import FeedRunner, Recorder
from feeds.simulator.venue import LoopbackVenue
from feeds.venue import VenueAdapter
from publish.catalog import RegistryCatalog
from publish.fanout import Fanout
from publish.history import HistoryRoute
from publish.metrics import LatencyRecorder, Metrics
from publish.positions import PositionBook
from publish.profit import ProfitEngine
from publish.server import reserved_fds
from publish.storage import (
    FlushedPositionStore,
    StorageFlusher,
    bbo_row_from_snapshot,
)
from publish.storage.backend import BboHistoryReader, PrunableBackend
from publish.storage.retention import Retention
from publish.storage.rows import feed_event_row

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class RunningServer:
    """What a started server exposes to whoever started it (CLI banner, tests)."""

    url: str
    http_url: str
    registry: BookRegistry
    runners: tuple[FeedRunner, ...]
    flusher: StorageFlusher
    metrics: Metrics
    positions: PositionBook
    profit: ProfitEngine
    simulators: Mapping[str, LoopbackVenue[Any]] = field(default_factory=dict)
    """Venue id -> the simulator standing in for it (tests inject faults through it)."""
    role: str = "all"
    bus: IngestBus | None = None
    """An ingest's bus publisher and connection."""
    refreshers: Mapping[str, MetadataRefresher] = field(default_factory=dict)
    """Venue id -> what keeps its instruments in step with its metadata (its runners,
    including those started for instruments listed since the start)."""


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[RunningServer], None] | None = None,
    heap: HeapKeeper | None = None,
) -> None:
    """Run the whole server until cancelled; on cancellation, drain storage and return.
    ``heap``: the process's heap keeper, shown on /stats and /metrics."""
    start = seq_base()
    registry = BookRegistry(nbbo_seq_base=start)
    recorder = LatencyRecorder()
    registry.on_snapshot(recorder.on_snapshot)
    backend = storage_backend(settings.storage)
    await backend.open()
    flusher = StorageFlusher(
        backend,
        window_ms=settings.storage.window_ms,
        max_pending_rows=settings.storage.max_pending_rows,
        on_flush=recorder.on_flush,
        # The acks of a commit go out in its own turn (the fan-out is bound below).
        after_commit=lambda: fanout.flush_replies(),
    )

    def store_bbo(snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        if not snapshot.same_top(previous):
            flusher.add_bbo(bbo_row_from_snapshot(snapshot))

    def store_incident(incident: FeedIncident) -> None:
        flusher.add_feed_event(feed_event_row(incident))

    registry.on_snapshot(store_bbo)
    registry.on_incident(store_incident)
    fanout = Fanout(
        registry,
        book_depth=settings.book.capture_depth,
        metrics=lambda: metrics.report(),  # bound below: Metrics reads the fan-out's counters
        metrics_interval=None,  # Metrics publishes the channel after each of its reports
        on_written=recorder.on_written,
    )
    metrics = Metrics(
        recorder,
        registry=registry,
        fanout=fanout.counters,
        flusher=flusher,
        on_report=fanout.publish_metrics,
    )
    role = settings.node.role
    bus = IngestBus.start(settings, registry) if role == "ingest" else None
    sink: FeedSink = bus.publisher if bus is not None else registry
    node = bus.node if bus is not None else NodeState(role)
    positions = PositionBook(
        RegistryCatalog(registry),
        FlushedPositionStore(flusher, backend),
        ack_timeout=settings.positions.ack_timeout_ms / 1000,
        max_positions_per_account=settings.positions.max_per_account,
    )
    profit = ProfitEngine(registry, fanout, marks_per_tick=settings.positions.profit_marks_per_tick)
    positions.add_listener(profit)
    if role == "all":  # an ingest keeps no positions: they are the positions role's
        try:
            # Profit resumes for every position acknowledged before the last stop.
            await positions.load()
        except BaseException:
            await backend.close()
            raise
        log.info("%d open positions loaded from %s", len(positions), backend.name)
    try:
        # Shutdown order: the task group (feeds, flusher, metrics) is cancelled first,
        # then the stack closes the server and the simulated venues the feeds used.
        async with contextlib.AsyncExitStack() as stack:
            runners: list[FeedRunner] = []
            refreshers: list[MetadataRefresher] = []
            simulators: dict[str, LoopbackVenue[Any]] = {}
            feed_group: list[asyncio.TaskGroup] = []  # the task group below, once it runs

            def start_runners(
                endpoints: Endpoints, limiter: WeightLimiter | None, venue: VenueSettings
            ) -> list[FeedRunner]:
                """Runners for instruments a metadata refresh added, started at once."""
                added = build_runners(
                    settings, venue, endpoints, sink, limiter=limiter, seq_base=start
                )
                (group,) = feed_group  # refreshes run inside it
                metrics.add_feeds(added)
                admin.add(added)
                for runner in added:
                    group.create_task(runner.run(), name=f"feed:{runner.venue}")
                return added

            for venue in settings.venues:
                endpoints = await stack.enter_async_context(
                    venue_endpoints(settings, venue, simulators)
                )
                limiter = rest_budget(venue)
                resolved = await learn_instruments(venue, endpoints, limiter=limiter)
                declare_halted(sink, resolved, time.time_ns())
                venue_runners = build_runners(
                    settings, resolved.venue, endpoints, sink, limiter=limiter, seq_base=start
                )
                runners += venue_runners
                refreshers.append(
                    MetadataRefresher(
                        venue,
                        resolved,
                        endpoints,
                        runners=venue_runners,
                        sink=sink,
                        start_runners=partial(start_runners, endpoints, limiter),
                        limiter=limiter,
                    )
                )
            admin = FeedAdmin(runners)
            server = await stack.enter_async_context(
                node_server(
                    settings,
                    registry,
                    fanout,
                    positions=positions if role == "all" else None,
                    position_op=recorder.on_position_op,
                    reserved=reserved_fds(feed_connections=len(runners)),
                    admin=admin,
                )
            )
            install_node_pages(server.routes, metrics, node, storage=(backend, flusher), heap=heap)
            if isinstance(backend, BboHistoryReader):
                HistoryRoute(registry, backend, clock=fanout.clock).install(server.routes)
            metrics.add_feeds(runners)
            metrics.add_feeds(refreshers)
            async with asyncio.TaskGroup() as group:
                feed_group.append(group)
                group.create_task(flusher.run(), name="storage-flusher")
                if settings.storage.retain_bbo_hours > 0 and isinstance(backend, PrunableBackend):
                    retention = Retention(
                        flusher, backend, retain_hours=settings.storage.retain_bbo_hours
                    )
                    group.create_task(retention.run(), name="storage-retention")
                group.create_task(metrics.run(), name="metrics")
                if bus is not None:
                    group.create_task(bus.link.run(), name="bus:link")
                    group.create_task(bus.publisher.run(), name="bus:publisher")
                for runner in runners:
                    group.create_task(runner.run(), name=f"feed:{runner.venue}")
                for refresher in refreshers:
                    group.create_task(refresher.run(), name=f"metadata:{refresher.venue}")
                if on_ready is not None:
                    on_ready(
                        RunningServer(
                            server.url,
                            server.http_url,
                            registry,
                            tuple(runners),
                            flusher,
                            metrics,
                            positions,
                            profit,
                            simulators,
                            role,
                            bus,
                            {refresher.venue: refresher for refresher in refreshers},
                        )
                    )
                await asyncio.Event().wait()  # until cancelled
    finally:
        await _drain(flusher)
        await backend.close()


def build_runners(
    settings: Settings,
    venue: VenueSettings,
    endpoints: tuple[str | None, str | None],
    sink: FeedSink,
    *,
    recorder: Recorder | None = None,
    seq_base: int = 0,
    limiter: WeightLimiter | None = None,
) -> list[FeedRunner]:
    """One runner per connection the venue needs, sharing the venue's REST budget
    (``limiter``, or a new one), all writing to ``sink``."""
    first = build_adapter(venue, *endpoints)
    if limiter is None and first.rest_weight_per_minute:
        limiter = WeightLimiter(first.rest_weight_per_minute)
    return [
        FeedRunner(
            build_adapter(venue, *endpoints),  # adapters hold per-connection state
            sink=sink,
            instruments=instruments,
            capture_depth=settings.book.capture_depth,
            limiter=limiter,
            recorder=recorder,
            seq_base=seq_base,
        )
        for instruments in connection_groups(first)
    ]


def connection_groups(adapter: VenueAdapter) -> list[list[str]]:
    """The venue's instruments split into connections of at most the venue's limit."""
    instruments = adapter.symbols.instruments()
    size = adapter.max_instruments_per_connection or len(instruments) or 1
    return [instruments[i : i + size] for i in range(0, len(instruments), size)]


@contextlib.asynccontextmanager
async def venue_endpoints(
    settings: Settings,
    venue: VenueSettings,
    simulators: dict[str, LoopbackVenue[Any]] | None = None,
) -> AsyncIterator[tuple[str | None, str | None]]:
    """The venue's (websocket, REST) base URLs: its simulator's when simulated (added
    to ``simulators`` under the venue id)."""
    if not venue.simulate:
        yield venue.ws_url, venue.rest_url
        return
    async with simulator_for(venue, settings.simulator) as simulator:
        if simulators is not None:
            simulators[venue.id] = simulator
        endpoints = simulator_endpoints(venue, simulator)
        log.info("simulated %s venue on %s", venue.id, endpoints[0])
        yield endpoints


async def _drain(flusher: StorageFlusher) -> None:
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
            await flusher.drain()
    except TimeoutError:
        log.error(
            "storage did not drain within %ss; %d rows not written",
            DRAIN_TIMEOUT_SECONDS,
            flusher.pending_rows,
        )
