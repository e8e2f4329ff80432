"""A node's role and bus state, as /health and /metrics show them, and the HTTP pages
every node serves (``install_node_pages``): the single process, an ingest, an edge and a
positions shard install the same metrics routes and health checks through it.

``/health`` has a ``node`` entry (its ``role`` and, on a bus node, ``bus``: the link's
state and the role's own counters); ``/metrics`` has the role as a label of
``marketcast_build_info`` and the bus as ``marketcast_bus_*``; given the process's heap
keeper, /stats has its ``heap`` and /metrics its ``marketcast_heap_*`` (``app.heapstate``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.auth import auth_policy
from app.heap import HeapKeeper
from app.heapstate import HeapCollector, heap_facts
from app.settings import Settings
from app.storage import storage_gauges, storage_health
from book.registry import BookRegistry
from bus.edge import BusEdge
from bus.ingest import BusPublisher
from bus.link import BusLink
from publish.admin import AdminControl
from publish.fanout import Fanout
from publish.http import HttpRoutes
from publish.metrics import Metrics
from publish.metrics.pages import MetricsPages
from publish.position_requests import OnAnswered
from publish.position_service import PositionService
from publish.server import MarketServer, reserved_fds
from publish.storage import StorageBackend, StorageFlusher

PREFIX = "marketcast"


def node_server(
    settings: Settings,
    registry: BookRegistry,
    fanout: Fanout,
    *,
    positions: PositionService | None = None,
    position_op: OnAnswered | None = None,
    reserved: int = reserved_fds(),
    reuse_port: bool = False,
    admin: AdminControl | None = None,
    websockets: bool = True,
) -> MarketServer:
    """A node's ``MarketServer`` where ``[server]`` says (host, port, limits) with the
    token policy of ``[auth]``; the rest is what the role adds (see ``MarketServer``)."""
    return MarketServer(
        registry,
        fanout,
        host=settings.server.host,
        port=settings.server.port,
        limits=settings.server.limits,
        auth=auth_policy(settings),
        positions=positions,
        position_op=position_op,
        reserved_fds=reserved,
        reuse_port=reuse_port,
        admin=admin,
        websockets=websockets,
    )


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
                "login": self.link.credentials.describe(),
                "last_error": state.last_error,
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


def install_node_pages(
    routes: HttpRoutes,
    metrics: Metrics,
    node: NodeState,
    *,
    storage: tuple[StorageBackend, StorageFlusher] | None = None,
    collectors: Iterable[Collector] = (),
    heap: HeapKeeper | None = None,
) -> None:
    """Add a node's /metrics, /stats and /dashboard (``MetricsPages``) and its /health
    checks to ``routes``: ``node`` (role and bus) and, for a node that stores,
    ``storage`` (backend, health, pending rows) with its gauges on /metrics; ``heap``
    (the process's keeper, when it has one) on /stats and /metrics."""
    gauges = [] if storage is None else storage_gauges(storage[0])
    families = [*node.collectors(), *collectors]
    sections: dict[str, Callable[[], object]] = {}
    if heap is not None:
        families.append(HeapCollector(heap))
        sections["heap"] = partial(heap_facts, heap)
    MetricsPages(
        metrics, role=node.role, gauges=gauges, collectors=families, sections=sections
    ).install(routes)
    routes.add_health_check("node", node.health)
    if storage is not None:
        routes.add_health_check("storage", partial(storage_health, *storage))
