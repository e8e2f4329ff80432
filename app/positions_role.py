"""The ``positions`` role, and the positions part of an edge.

``serve_shard`` runs one positions shard until cancelled: its storage (a SQLite file of
its own by default, ``<stem>-shard-<k><suffix>`` beside ``[storage].path``; PostgreSQL
shared by every shard), the same ``PositionBook`` and ``ProfitEngine`` as one process
with the shard's open positions reloaded, the market data of the bus in a local registry
(a ``bus.edge.BusEdge``, as an edge has) for the engine to mark them against, and a
``bus.position_shard.PositionShard`` answering edges. Shutdown drains storage.

``edge_positions`` gives an edge its ``PositionService`` (a ``bus.position_client.
ShardClient``) and its ``profit`` channel source (a ``publish.profit_relay.ProfitRelay``
fed by the same client), the two ends of the seam that one process fills with the
position book and the profit engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from app.heap import HeapKeeper
from app.nodestate import NodeState, edge_state, install_node_pages, node_server
from app.preflight import check_before_start
from app.settings import Settings, StorageSettings
from app.shardstate import ShardCollector, shard_health
from app.storage import storage_backend
from book.registry import BookRegistry
from bus.credentials import BusCredentials
from bus.edge import BusEdge
from bus.link import BusLink
from bus.position_client import ShardClient
from bus.position_shard import PositionShard, ShardStore
from bus.positions import PositionSubjects, ProfitBatch
from bus.subjects import Subjects
from publish.catalog import RegistryCatalog
from publish.fanout import Fanout
from publish.metrics import LatencyRecorder, Metrics
from publish.positions import PositionBook
from publish.profit import ProfitEngine
from publish.profit_relay import ProfitRelay
from publish.storage import FlushedPositionStore, StorageFlusher

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class BusPlace:
    """Where a node sits on the bus (``[bus]``)."""

    servers: tuple[str, ...]
    """NATS server URLs (one, or the servers of one NATS cluster)."""
    prefix: str = "marketcast"
    shards: int = 1
    shard: int = 0
    stale_after_ms: float = 2_000.0
    credentials: BusCredentials = BusCredentials()
    """How it logs in to NATS."""

    @classmethod
    def of(cls, settings: Settings) -> BusPlace:
        """The node's place as ``[bus]`` says."""
        bus = settings.bus
        return cls(
            bus.servers, bus.prefix, bus.shards, bus.shard, bus.stale_after_ms, bus.credentials
        )


@dataclass(frozen=True, slots=True)
class RunningShard:
    """What a started shard exposes (tests, the banner)."""

    shard: PositionShard
    book: PositionBook
    registry: BookRegistry
    flusher: StorageFlusher
    storage: str
    """Where its positions are kept (the SQLite file, or ``postgres``)."""
    http_url: str
    """Its /health, /metrics, /stats and /dashboard."""
    metrics: Metrics


def shard_storage(storage: StorageSettings, shard: int) -> StorageSettings:
    """The storage of shard ``shard``: SQLite -> its own file beside ``path``
    (``marketcast.db`` -> ``marketcast-shard-0.db``); PostgreSQL -> shared, unchanged."""
    if storage.backend != "sqlite":
        return storage
    path = Path(storage.path)
    return replace(storage, path=str(path.with_name(f"{path.stem}-shard-{shard}{path.suffix}")))


def check_shard_before_start(settings: Settings) -> None:
    """A shard's preflight: its HTTP port, its storage and the token secret."""
    shard = BusPlace.of(settings).shard
    check_before_start(replace(settings, storage=shard_storage(settings.storage, shard)))


async def serve_shard(
    settings: Settings,
    place: BusPlace | None = None,
    *,
    on_ready: Callable[[RunningShard], None] | None = None,
    heap: HeapKeeper | None = None,
) -> None:
    """Run positions shard ``place.shard`` (default: ``[bus]``'s) until cancelled; then
    drain its storage. Its HTTP (``[server].host``/``port``) serves /health, /metrics,
    /stats and /dashboard as every node's does (with ``heap``, the process's heap keeper),
    no websockets."""
    if place is None:
        place = BusPlace.of(settings)
    registry = BookRegistry()
    recorder = LatencyRecorder()
    registry.on_snapshot(recorder.on_snapshot)
    link = BusLink(
        place.servers, name=f"marketcast-positions-{place.shard}", credentials=place.credentials
    )
    market = BusEdge(
        registry,
        link,
        Subjects(place.prefix),
        stale_after=place.stale_after_ms / 1000,
        on_hop=recorder.on_bus_hop,
    )
    fanout = Fanout(registry, metrics_interval=None)
    storage = shard_storage(settings.storage, place.shard)
    backend = storage_backend(storage)
    await backend.open()
    flusher = StorageFlusher(
        backend,
        window_ms=storage.window_ms,
        max_pending_rows=storage.max_pending_rows,
        on_flush=recorder.on_flush,
    )
    metrics = Metrics(recorder, registry=registry, fanout=fanout.counters, flusher=flusher)
    book = PositionBook(
        RegistryCatalog(registry),
        ShardStore(FlushedPositionStore(flusher, backend), shard=place.shard, shards=place.shards),
        ack_timeout=settings.positions.ack_timeout_ms / 1000,
        max_positions_per_account=settings.positions.max_per_account,
    )
    profit = ProfitEngine(registry, fanout, marks_per_tick=settings.positions.profit_marks_per_tick)
    book.add_listener(profit)
    try:
        loaded = await book.load()
        log.info(
            "positions shard %d of %d: %d open positions loaded from %s",
            place.shard,
            place.shards,
            loaded,
            backend.name,
        )
        shard = PositionShard(
            book,
            profit,
            fanout,
            link,
            PositionSubjects(place.prefix),
            shard=place.shard,
            shards=place.shards,
            on_op=recorder.on_position_op,
        )
        async with node_server(settings, registry, fanout, websockets=False) as server:
            node = NodeState("positions", link, edge_state(market))
            install_node_pages(
                server.routes,
                metrics,
                node,
                storage=(backend, flusher),
                collectors=[ShardCollector(shard)],
                heap=heap,
            )
            server.routes.add_health_check("positions", partial(shard_health, shard))
            async with asyncio.TaskGroup() as group:
                group.create_task(flusher.run(), name="storage-flusher")
                group.create_task(link.run(), name="bus-link")
                group.create_task(market.run(), name="bus-market")
                group.create_task(shard.run(), name="positions-shard")
                group.create_task(metrics.run(), name="metrics")
                await shard.wait_ready()
                if on_ready is not None:
                    where = storage.path if storage.backend == "sqlite" else storage.backend
                    on_ready(
                        RunningShard(
                            shard, book, registry, flusher, where, server.http_url, metrics
                        )
                    )
                await asyncio.Event().wait()  # until cancelled
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                await flusher.drain()
        await backend.close()


@dataclass(frozen=True, slots=True)
class EdgePositions:
    """An edge's positions: ``service`` for the sessions, ``relay`` the profit channel.
    Run ``service.run()`` in the edge's task group."""

    service: ShardClient
    relay: ProfitRelay


def edge_positions(
    fanout: Fanout, link: BusLink, place: BusPlace, *, ack_timeout: float
) -> EdgePositions:
    """The positions of an edge: ops routed to the owning shard, profit relayed."""
    service = ShardClient(
        link,
        PositionSubjects(place.prefix),
        shards=place.shards,
        ack_timeout=ack_timeout,
        # An answer goes out in the task step that gave it, not after the next poll.
        after_answer=fanout.flush_replies,
    )
    relay = ProfitRelay(fanout, service)

    def deliver(account: str, batch: ProfitBatch) -> None:
        relay.receive(account, batch.frames, whole=batch.whole)

    service.deliver_to(deliver)
    return EdgePositions(service, relay)
