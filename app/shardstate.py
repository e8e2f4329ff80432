"""What a positions shard shows of itself on /health (``positions``) and /metrics
(``marketcast_positions_*``): which shard it is, the positions and accounts it holds, the
ops it served and refused, the accounts watched for profit."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bus.position_shard import PositionShard
from publish.metrics.prometheus import fact_families

PREFIX = "marketcast_positions"
GAUGES = {
    "shard": "Which shard this node is (0 .. shards - 1)",
    "shards": "Positions shards in the cluster ([bus].shards)",
    "open": "Positions held (open, opening or closing)",
    "accounts": "Accounts holding at least one position",
    "watched_accounts": "Accounts whose profit edges watch",
}
COUNTERS = {
    "ops": "Position ops received from edges",
    "acks": "Position ops acknowledged (after their commit)",
    "refusals": "Position ops refused (the error code went back to the edge)",
    "bad_requests": "Position ops or watches that did not decode",
    "wrong_shard": "Ops or watches for an account of another shard",
    "watches": "Profit watches received (first ones and renewals)",
    "profit_batches": "Profit batches published",
}


def shard_facts(shard: PositionShard) -> dict[str, int]:
    """Every figure, by the names of ``GAUGES`` and ``COUNTERS``."""
    counters = shard.counters
    return {
        "shard": shard.shard,
        "shards": shard.shards,
        "open": len(shard.book),
        "accounts": shard.book.accounts,
        "watched_accounts": len(shard.watched),
        "ops": counters.ops,
        "acks": counters.acks,
        "refusals": counters.refusals,
        "bad_requests": counters.bad_requests,
        "wrong_shard": counters.wrong_shard,
        "watches": counters.watches,
        "profit_batches": counters.batches,
    }


def shard_health(shard: PositionShard) -> tuple[bool, dict[str, object]]:
    """The ``positions`` entry of /health: healthy while the shard listens for ops (its
    storage and bus have entries of their own)."""
    return shard.ready, dict(shard_facts(shard))


class ShardCollector(Collector):
    """``marketcast_positions_*`` of one shard."""

    def __init__(self, shard: PositionShard) -> None:
        self._shard = shard

    def collect(self) -> Iterator[Metric]:
        yield from fact_families(PREFIX, GAUGES, COUNTERS, shard_facts(self._shard))
