"""What an edge shows of its position ops on /health (``positions``) and /metrics
(``marketcast_edge_positions_*``): the ops it routed to the shards and how each was
answered, above all those no shard answered within ``[positions].ack_timeout_ms``
(``storage_unavailable``), and the profit it relays. A positions shard shows its own side
(``app.shardstate``); the names differ, so that summing a family over a cluster never
counts an op twice."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bus.position_client import ShardClient
from publish.metrics.prometheus import fact_families

PREFIX = "marketcast_edge_positions"
GAUGES = {
    "watched_accounts": "Accounts whose profit this edge relays to its clients",
}
COUNTERS = {
    "ops": "Position ops routed to the owning shard",
    "acks": "Position ops the shard acknowledged (after its commit)",
    "refusals": "Position ops the shard refused (its error code went to the client)",
    "unavailable": (
        "Position ops no shard answered within ack_timeout_ms (storage_unavailable: the "
        "op may still commit; the client's retry gets its ack)"
    ),
    "late_answers": (
        "Shard answers that came after their op was answered storage_unavailable (ignored)"
    ),
    "bad_answers": "Messages of shard answers that did not decode (their ops timed out)",
    "profit_batches": "Profit batches relayed from the shards",
    "dropped_batches": (
        "Profit batches dropped: undecodable, or for an account this edge no longer relays"
    ),
    "watch_failures": "Profit watches a shard did not answer in time (renewed later)",
}


def edge_position_facts(client: ShardClient) -> dict[str, int]:
    """Every figure, by the names of ``GAUGES`` and ``COUNTERS``."""
    counters = client.counters
    return {
        "watched_accounts": len(client.watching),
        "ops": counters.ops,
        "acks": counters.acks,
        "refusals": counters.refusals,
        "unavailable": counters.unavailable,
        "late_answers": counters.late_answers,
        "bad_answers": counters.bad_answers,
        "profit_batches": counters.batches,
        "dropped_batches": counters.dropped_batches,
        "watch_failures": counters.watch_failures,
    }


def edge_position_health(client: ShardClient) -> tuple[bool, dict[str, object]]:
    """The ``positions`` entry of an edge's /health: always healthy (the bus link has an
    entry of its own); its figures say how ops fared."""
    return True, dict(edge_position_facts(client))


class EdgePositionCollector(Collector):
    """``marketcast_edge_positions_*`` of one edge."""

    def __init__(self, client: ShardClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        yield from fact_families(PREFIX, GAUGES, COUNTERS, edge_position_facts(self._client))
