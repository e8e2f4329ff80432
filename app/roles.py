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

Every node's /health and /metrics say its role and its bus state.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.auth import auth_policy
from app.positions_role import BusPlace, edge_positions
from app.preflight import check_port_free, check_secret_file
from app.settings import Settings
from book.registry import BookRegistry
from book.versions import seq_base
from bus.edge import BusEdge
from bus.ingest import BusPublisher
from bus.link import BusLink
from bus.subjects import Subjects
from publish.fanout import Fanout
from publish.metrics import LatencyRecorder, Metrics
from publish.metrics.pages import MetricsPages
from publish.server import MarketServer

PREFIX = "marketcast"
BUS_HELP = {
    "sources": "Ingest processes heard within stale_after_ms",
    "last_message_age_ms": "Seconds since the last bus message (edge: received; ingest: sent)",
    "messages": "Bus messages received",
    "gaps": "Bus messages found missing by their sequence (lost or reordered)",
    "reordered": "Missing bus messages that arrived after a newer one",
    "late": "Duplicate or old bus messages dropped",
    "repairs": "Instruments restored by a state request (join, gap, failover)",
    "requests": "State requests sent to ingests",
    "request_failures": "State requests unanswered or failed",
    "failovers": "Instruments moved to another ingest",
    "stale_marks": "Instruments marked stale because their ingest fell silent",
    "bad_messages": "Bus messages that did not decode",
    "offered": "Snapshots and states the feeds handed to the bus publisher",
    "published": "Bus messages published (after conflation)",
    "dropped": "Bus messages NATS refused (edges repair them)",
    "heartbeats": "Heartbeats published",
    "state_requests": "State requests answered",
}
NodeCheck = Callable[[], tuple[bool, dict[str, object]]]


def check_edge_before_start(settings: Settings) -> None:
    """An edge's preflight: its port (shared with other edges) and the token secret."""
    check_port_free(settings.server.host, settings.server.port, reuse_port=True)
    check_secret_file(settings)


def bus_link(settings: Settings) -> BusLink:
    return BusLink(settings.bus.servers, name=f"marketcast-{settings.node.role}-{os.getpid()}")


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
    settings: Settings, *, on_ready: Callable[[EdgeServer], None] | None = None
) -> None:
    """Run an edge until cancelled: the bus in, websocket and HTTP clients out."""
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
    async with MarketServer(
        registry,
        fanout,
        host=settings.server.host,
        port=settings.server.port,
        limits=settings.server.limits,
        auth=auth_policy(settings),
        reuse_port=True,
        positions=positions.service,
    ) as server:
        MetricsPages(metrics, role="edge", collectors=node.collectors()).install(server.routes)
        server.routes.add_health_check("node", node.health)
        async with asyncio.TaskGroup() as group:
            group.create_task(link.run(), name="bus:link")
            group.create_task(edge.run(), name="bus:edge")
            group.create_task(positions.service.run(), name="bus:positions")
            group.create_task(metrics.run(), name="metrics")
            if on_ready is not None:
                bus = ", ".join(settings.bus.servers)
                on_ready(EdgeServer(server.url, server.http_url, registry, metrics, edge, bus))
            await asyncio.Event().wait()  # until cancelled


# -- role and bus state on /health and /metrics ----------------------------------------------


BusFacts = Callable[[], tuple[bool, dict[str, int | float | None]]]
"""``() -> (healthy, facts)``: the role's own view of the bus (counters, ages)."""


def edge_state(edge: BusEdge) -> BusFacts:
    follower = edge.follower

    def facts() -> tuple[bool, dict[str, int | float | None]]:
        counters = follower.counters
        sources = follower.live_sources(time.monotonic())
        return sources > 0, {
            "sources": sources,
            "last_message_age_ms": _age_ms(counters.last_message_ns),
            "messages": counters.messages,
            "gaps": counters.gaps,
            "reordered": counters.reordered,
            "late": counters.late,
            "repairs": counters.repairs,
            "requests": counters.requests,
            "request_failures": edge.request_failures,
            "failovers": counters.failovers,
            "stale_marks": counters.stale_marks,
            "bad_messages": counters.bad_messages,
        }

    return facts


def ingest_state(publisher: BusPublisher) -> BusFacts:
    def facts() -> tuple[bool, dict[str, int | float | None]]:
        counters = publisher.counters
        return True, {
            "source": publisher.source,
            "last_message_age_ms": _age_ms(counters.last_publish_ns),
            "offered": counters.offered,
            "published": counters.published,
            "dropped": counters.dropped,
            "heartbeats": counters.heartbeats,
            "state_requests": counters.state_requests,
        }

    return facts


def _age_ms(ts: int) -> float | None:
    return None if not ts else round((time.time_ns() - ts) / 1e6, 3)


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node's role and bus state: the ``node`` entry of /health, families of /metrics.
    ``all`` has no bus (``link`` and ``facts`` are ``None``)."""

    role: str
    link: BusLink | None = None
    facts: BusFacts | None = None

    def collectors(self) -> list[Collector]:
        """Its /metrics families: the bus's, when it has one."""
        return [] if self.link is None else [NodeCollector(self)]

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy while connected to the bus and (edge) hearing an ingest."""
        if self.link is None or self.facts is None:
            return True, {"role": self.role}
        ok, facts = self.facts()
        state = self.link.state
        connected = self.link.connected
        return connected and ok, {
            "role": self.role,
            "bus": {
                "connected": connected,
                "server": state.server,
                "connects": state.connects,
                "disconnects": state.disconnects,
                **facts,
            },
        }


class NodeCollector(Collector):
    """``marketcast_bus_*`` of one node (its role is ``marketcast_build_info``'s label)."""

    def __init__(self, node: NodeState) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        if node.link is None or node.facts is None:
            return
        connected = GaugeMetricFamily(
            f"{PREFIX}_bus_connected", "1 while connected to the NATS bus"
        )
        connected.add_metric([], 1 if node.link.connected else 0)
        yield connected
        state = node.link.state
        for link_name, count, text in (
            ("connects", state.connects, "Connections made to the bus (first and reconnects)"),
            ("disconnects", state.disconnects, "Times the bus connection was lost"),
        ):
            link_counter = CounterMetricFamily(f"{PREFIX}_bus_{link_name}", text)
            link_counter.add_metric([], count)
            yield link_counter
        _, facts = node.facts()
        for name, fact in facts.items():
            if name == "source" or fact is None:
                continue
            if name.endswith("_ms"):
                seconds = f"{PREFIX}_bus_{name.removesuffix('_ms')}_seconds"
                gauge = GaugeMetricFamily(seconds, BUS_HELP[name])
                gauge.add_metric([], fact / 1000)
                yield gauge
            elif name == "sources":
                gauge = GaugeMetricFamily(f"{PREFIX}_bus_sources", BUS_HELP[name])
                gauge.add_metric([], fact)
                yield gauge
            else:
                counter = CounterMetricFamily(f"{PREFIX}_bus_{name}", BUS_HELP[name])
                counter.add_metric([], fact)
                yield counter
