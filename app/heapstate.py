"""What the heap keeper (``app.heap``) shows of itself on /stats (``heap``) and /metrics
(``marketcast_heap_*``): the heap's two sizes (allocated blocks now, frozen objects as
the keeper counts them) and the marks both must reach for the next reclaim, the
collector's full passes whose survivors it froze, its reclaims, the unreachable frozen
objects they freed and how long the last one held the loop. Reclaims that keep coming
while the node holds no more, or frozen objects that keep growing from one reclaim to
the next, are a leak; a long last reclaim is a pause every client felt. Reading these
costs no walk of the heap.

A node has them once ``marketcast run`` gives it its keeper; a node built without one
(tests, embedding) has neither the ``heap`` key nor the families.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.heap import HeapKeeper
from publish.metrics.prometheus import fact_families

PREFIX = "marketcast_heap"
GAUGES = {
    "allocated_blocks": "The interpreter's small-object blocks in use: the heap's size",
    "reclaim_at_blocks": "The allocated blocks from which a reclaim is due (with frozen)",
    "frozen_objects": "Objects frozen out of the collector's passes (those dead since too)",
    "reclaim_at_frozen": "The frozen objects from which a reclaim is due (with blocks)",
}
COUNTERS = {
    "full_passes": "The collector's full passes whose survivors the heap keeper froze",
    "frozen_walks": "Exact counts of the frozen objects (walks) taken to confirm a reclaim",
    "reclaims": "Reclaims: frozen objects unfrozen, collected and frozen again",
    "reclaimed_objects": "Unreachable frozen objects the reclaims collected",
}


def heap_facts(keeper: HeapKeeper) -> dict[str, int | float]:
    """The ``heap`` object of /stats: the ``GAUGES`` (allocated blocks now), the
    ``COUNTERS`` since the keeper started and ``last_reclaim_ms`` (0 before the first
    reclaim)."""
    counts = keeper.counts
    return {
        "allocated_blocks": sys.getallocatedblocks(),
        "reclaim_at_blocks": counts.reclaim_at_blocks,
        "frozen_objects": counts.frozen,
        "reclaim_at_frozen": counts.reclaim_at_frozen,
        "full_passes": counts.full_passes,
        "frozen_walks": counts.frozen_walks,
        "reclaims": counts.reclaims,
        "reclaimed_objects": counts.reclaimed,
        "last_reclaim_ms": round(counts.last_reclaim_ms, 3),
    }


class HeapCollector(Collector):
    """``marketcast_heap_*`` of the process's keeper."""

    def __init__(self, keeper: HeapKeeper) -> None:
        self._keeper = keeper

    def collect(self) -> Iterator[Metric]:
        yield from fact_families(PREFIX, GAUGES, COUNTERS, heap_facts(self._keeper))
        last = GaugeMetricFamily(
            f"{PREFIX}_last_reclaim_seconds",
            "How long the last reclaim held the event loop (0 before the first)",
        )
        last.add_metric([], self._keeper.counts.last_reclaim_ms / 1000)
        yield last
