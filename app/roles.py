"""What a node of each ``[node].role`` runs.

``all``        ``app.runtime.serve``: the single process, unchanged.
``ingest``     ``app.runtime.serve`` whose feeds write to a ``bus.ingest.BusPublisher``
               (the local registry, storage and HTTP as in ``all``, and the bus); it
               keeps no positions (position ops are the positions role's).
``edge``       ``serve_edge``: no feeds, no storage; ``bus.edge.BusEdge`` fills the
               registry that the same subscription server, HTTP routes and metrics
               read; bound with SO_REUSEPORT so edges share a port; position ops go
               to the owning positions shard and ``profit`` is relayed from it
               (``app.positions_role.edge_positions``).
``positions``  ``app.positions_role.serve_shard``: shard ``[bus].shard`` of
               ``[bus].shards``, its accounts' positions, storage and profit.

Every node's /health and /metrics say its role and its bus state (``app.nodestate``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from app.edgepositions import EdgePositionCollector, edge_position_health
from app.heap import HeapKeeper
from app.nodestate import NodeState, edge_state, ingest_state, install_node_pages, node_server
from app.positions_role import BusPlace, edge_positions
from app.preflight import check_bus_credentials, check_port_free, check_secret_file
from app.settings import Settings
from book.registry import BookRegistry
from book.versions import seq_base
from bus.edge import BusEdge
from bus.ingest import BusPublisher
from bus.link import BusLink
from bus.subjects import Subjects
from publish.fanout import Fanout
from publish.metrics import LatencyRecorder, Metrics


def check_edge_before_start(settings: Settings) -> None:
    """An edge's preflight: its port (shared with other edges), the token secret and the
    bus's credential files."""
    check_port_free(settings.server.host, settings.server.port, reuse_port=True)
    check_secret_file(settings)
    check_bus_credentials(settings)


def bus_link(settings: Settings) -> BusLink:
    """The node's NATS connection, logged in with ``[bus]``'s credentials."""
    return BusLink(
        settings.bus.servers,
        name=f"marketcast-{settings.node.role}-{os.getpid()}",
        credentials=settings.bus.credentials,
    )


@dataclass(frozen=True, slots=True)
class IngestBus:
    """An ingest's bus: the publisher its feeds write to, its connection, its state."""

    link: BusLink
    publisher: BusPublisher
    node: NodeState

    @classmethod
    def start(cls, settings: Settings, registry: BookRegistry) -> IngestBus:
        """Built, not running yet: run ``link.run()`` and ``publisher.run()`` as tasks."""
        link = bus_link(settings)
        publisher = BusPublisher(registry, link, Subjects(settings.bus.prefix))
        return cls(link, publisher, NodeState("ingest", link, ingest_state(publisher)))


@dataclass(frozen=True, slots=True)
class EdgeServer:
    """What a started edge exposes to whoever started it (CLI banner, tests)."""

    url: str
    http_url: str
    registry: BookRegistry
    metrics: Metrics
    edge: BusEdge
    bus: str
    """The bus URL(s) it reads."""


async def serve_edge(
    settings: Settings,
    *,
    on_ready: Callable[[EdgeServer], None] | None = None,
    heap: HeapKeeper | None = None,
) -> None:
    """Run an edge until cancelled: the bus in, websocket and HTTP clients out. ``heap``:
    the process's heap keeper, shown on /stats and /metrics."""
    registry = BookRegistry(nbbo_seq_base=seq_base())  # an edge consolidates on its own
    recorder = LatencyRecorder()
    registry.on_snapshot(recorder.on_snapshot)
    fanout = Fanout(
        registry,
        book_depth=settings.book.capture_depth,
        metrics=lambda: metrics.report(),  # bound below: Metrics reads the fan-out's counters
        metrics_interval=None,
        on_written=recorder.on_written,
    )
    metrics = Metrics(
        recorder, registry=registry, fanout=fanout.counters, on_report=fanout.publish_metrics
    )
    link = bus_link(settings)
    edge = BusEdge(
        registry,
        link,
        Subjects(settings.bus.prefix),
        stale_after=settings.bus.stale_after_ms / 1000,
        on_hop=recorder.on_bus_hop,
    )
    node = NodeState("edge", link, edge_state(edge))
    positions = edge_positions(
        fanout, link, BusPlace.of(settings), ack_timeout=settings.positions.ack_timeout_ms / 1000
    )
    async with node_server(
        settings,
        registry,
        fanout,
        reuse_port=True,
        positions=positions.service,
        position_op=recorder.on_position_op,
    ) as server:
        install_node_pages(
            server.routes,
            metrics,
            node,
            collectors=[EdgePositionCollector(positions.service)],
            heap=heap,
        )
        server.routes.add_health_check(
            "positions", partial(edge_position_health, positions.service)
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(link.run(), name="bus:link")
            group.create_task(edge.run(), name="bus:edge")
            group.create_task(positions.service.run(), name="bus:positions")
            group.create_task(metrics.run(), name="metrics")
            if on_ready is not None:
                bus = f"{link.shown}  ({settings.bus.credentials.describe()})"
                on_ready(EdgeServer(server.url, server.http_url, registry, metrics, edge, bus))
            await asyncio.Event().wait()  # until cancelled
