"""What the heap keeper (``app.heap``) shows of itself on /stats (``heap``) and /metrics
(``marketcast_heap_*``): the objects frozen now, the collector's full passes whose
survivors it froze, its reclaims, the unreachable frozen objects they freed and how long
the last one held the loop. A frozen count that keeps growing between reclaims while the
node holds no more is a leak; a long last reclaim is a pause every client felt.

A node has them once ``marketcast run`` gives it its keeper; a node built without one
(tests, embedding) has neither the ``heap`` key nor the families.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.heap import HeapKeeper

PREFIX = "marketcast_heap"
COUNTERS = {
    "full_passes": "The collector's full passes whose survivors the heap keeper froze",
    "reclaims": "Reclaims: frozen objects unfrozen, collected and frozen again",
    "reclaimed_objects": "Unreachable frozen objects the reclaims collected",
}


def heap_facts(keeper: HeapKeeper) -> dict[str, int | float]:
    """The ``heap`` object of /stats: ``frozen_objects`` (now), the ``COUNTERS`` since
    the keeper started and ``last_reclaim_ms`` (0 before the first reclaim)."""
    counts = keeper.counts
    return {
        "frozen_objects": gc.get_freeze_count(),
        "full_passes": counts.full_passes,
        "reclaims": counts.reclaims,
        "reclaimed_objects": counts.reclaimed,
        "last_reclaim_ms": round(counts.last_reclaim_ms, 3),
    }


class HeapCollector(Collector):
    """``marketcast_heap_*`` of the process's keeper."""

    def __init__(self, keeper: HeapKeeper) -> None:
        self._keeper = keeper

    def collect(self) -> Iterator[Metric]:
        facts = heap_facts(self._keeper)
        frozen = GaugeMetricFamily(
            f"{PREFIX}_frozen_objects", "Objects frozen out of the collector's passes (now)"
        )
        frozen.add_metric([], facts["frozen_objects"])
        yield frozen
        for name, help_text in COUNTERS.items():
            counter = CounterMetricFamily(f"{PREFIX}_{name}", help_text)
            counter.add_metric([], facts[name])
            yield counter
        last = GaugeMetricFamily(
            f"{PREFIX}_last_reclaim_seconds",
            "How long the last reclaim held the event loop (0 before the first)",
        )
        last.add_metric([], self._keeper.counts.last_reclaim_ms / 1000)
        yield last
