"""``/metrics``: the Prometheus text exposition of ``Metrics``, through prometheus_client.

A custom collector turns the values of the last tick into metric families at scrape
time; prometheus_client renders them. Stage histograms become summaries in seconds
(``db_batch_rows`` in rows) whose quantiles 0.5/0.9/0.99/0.999 cover the last
``window`` (60 intervals: one minute) and whose ``_count``/``_sum`` run since start, and
also Prometheus histograms (``..._histogram_seconds``) with fixed cumulative buckets
since start, which unlike quantiles can be added up across servers
(``histogram_quantile(0.99, sum by (le) (rate(..._bucket[1m])))``):

    marketcast_ingest_seconds{quantile="0.99"} 4.1e-05
    marketcast_ingest_seconds_count 81234
    marketcast_ingest_histogram_seconds_bucket{le="5e-05"} 80990
    marketcast_feed_latency_seconds{venue="binance",quantile="0.5"} 0.0012
    marketcast_feed_gaps_total{venue="binance"} 0
    marketcast_instrument_activity{instrument="binance:BTC-USDT",activity="hot"} 1
    marketcast_build_info{version="0.1.0",commit="3f2a...",role="all"} 1

plus ``marketcast_event_loop_cpu_seconds_total`` (the event loop thread's CPU, beside
prometheus_client's ``process_cpu_seconds_total`` of every thread), prometheus_client's
``process_*`` (CPU, memory, open files) and ``python_info``.
A sample is put in the bucket of its HDR bucket's highest equivalent value (within 0.1%
of the sample). Cost per scrape: O(stages + venues + instruments + non-empty HDR
buckets), the quantiles precomputed by the tick.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from book.status import InstrumentState
from publish.metrics.build import build
from publish.metrics.hdr import QUANTILES, SECOND_NS, Histogram, highest_equivalent
from publish.metrics.recorder import Stage
from publish.metrics.service import Activity, Metrics, int_fields
from publish.storage.flusher import StorageHealth

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PREFIX = "marketcast"

STAGE_HELP = {
    Stage.FEED_LATENCY: "Exchange event time to receive (includes the clocks' offset)",
    Stage.INGEST: "Receive to book snapshot published",
    Stage.PUBLISH: "Book snapshot to the frame carrying it written to a subscriber",
    Stage.END_TO_END: "Receive to the frame written to a subscriber",
    Stage.DB_FLUSH: "Duration of one storage batch write (one transaction)",
    Stage.DB_BATCH_ROWS: "Rows in one storage batch",
    Stage.EVENT_LOOP_LAG: "How late an event-loop timer fires",
    Stage.BUS_HOP: "Edge: the ingest's book snapshot to the edge applying it (the bus hop)",
    Stage.POSITION_OP: (
        "A position op submitted to its answer queued (one process, an edge),"
        " or received from the bus to its answer sent (a positions shard)"
    ),
}

LATENCY_BUCKETS_NS = tuple(
    int(mantissa * 10**exponent) for exponent in range(3, 10) for mantissa in (1, 2.5, 5)
) + (10 * SECOND_NS, 30 * SECOND_NS)
"""Histogram bucket bounds of latencies: 1 µs to 30 s, 1-2.5-5 per decade."""
ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000)
"""Histogram bucket bounds of ``db_batch_rows``."""


@dataclass(frozen=True, slots=True)
class ExtraGauge:
    """One more gauge read at scrape time (``marketcast_<name>``), e.g. the WAL size."""

    name: str
    help: str
    read: Callable[[], float]


def fact_families(
    prefix: str,
    gauges: Mapping[str, str],
    counters: Mapping[str, str],
    facts: Mapping[str, float],
) -> Iterator[Metric]:
    """One unlabelled family per fact: ``<prefix>_<name>`` gauges, then counters (each
    name -> its help), every value read from ``facts`` (the same names as on /stats)."""
    for name, help_text in gauges.items():
        gauge = GaugeMetricFamily(f"{prefix}_{name}", help_text)
        gauge.add_metric([], facts[name])
        yield gauge
    for name, help_text in counters.items():
        counter = CounterMetricFamily(f"{prefix}_{name}", help_text)
        counter.add_metric([], facts[name])
        yield counter


FANOUT_GAUGES = frozenset({"clients"})
"""Fan-out ``Counters`` fields that are gauges; every other field is a counter."""


def summary_name(stage: Stage) -> str:
    """The summary of a stage: ``marketcast_<stage>_seconds``, or ``_db_batch_rows``."""
    if stage is Stage.DB_BATCH_ROWS:
        return f"{PREFIX}_{stage.value}"
    return f"{PREFIX}_{stage.value}_seconds"


def histogram_name(stage: Stage) -> str:
    """The histogram of a stage: ``marketcast_<stage>_histogram_seconds`` (or ``_rows``)."""
    if stage is Stage.DB_BATCH_ROWS:
        return f"{PREFIX}_{stage.value}_histogram"
    return f"{PREFIX}_{stage.value}_histogram_seconds"


def cumulative_buckets(histogram: Histogram, bounds: Sequence[int]) -> list[int]:
    """Samples since start at or below each bound, then the total (``+Inf``).
    O(non-empty HDR buckets x log(bounds))."""
    counts = [0] * (len(bounds) + 1)
    for index, n in histogram.since_start.items():
        counts[bisect_left(bounds, highest_equivalent(index))] += n
    for position in range(1, len(counts)):
        counts[position] += counts[position - 1]
    return counts


class MetricsCollector(Collector):
    """Yields every family of ``metrics`` (see the module docstring); ``role`` labels
    ``marketcast_build_info``."""

    def __init__(
        self, metrics: Metrics, *, role: str = "all", gauges: Sequence[ExtraGauge] = ()
    ) -> None:
        self._metrics = metrics
        self._role = role
        self._gauges = tuple(gauges)

    def collect(self) -> Iterator[Metric]:
        current = build()
        info = GaugeMetricFamily(
            f"{PREFIX}_build_info",
            "The running build (always 1): version, commit and role",
            labels=["version", "commit", "role"],
        )
        info.add_metric([current.version, current.commit, self._role], 1)
        yield info
        yield from self._summaries()
        yield from self._histograms()
        yield from self._fanout()
        yield from self._feeds()
        yield from self._instruments()
        yield from self._storage()
        started = GaugeMetricFamily(
            f"{PREFIX}_start_time_seconds", "When the server started (seconds since the epoch)"
        )
        started.add_metric([], self._metrics.started / SECOND_NS)
        yield started
        errors = CounterMetricFamily(
            f"{PREFIX}_metrics_tick_errors", "Once-a-second metrics reports that failed"
        )
        errors.add_metric([], self._metrics.tick_errors)
        yield errors
        loop_cpu = CounterMetricFamily(
            f"{PREFIX}_event_loop_cpu_seconds",
            "CPU time of the thread running the event loop, at the last metrics tick (its "
            "rate near 1 is a saturated loop; process_cpu_seconds_total counts every thread)",
        )
        loop_cpu.add_metric([], self._metrics.cpu.event_loop)
        yield loop_cpu
        for gauge in self._gauges:
            family = GaugeMetricFamily(f"{PREFIX}_{gauge.name}", gauge.help)
            family.add_metric([], gauge.read())
            yield family

    def _histograms(self) -> Iterator[Metric]:
        recorder = self._metrics.recorder
        feed = HistogramMetricFamily(
            histogram_name(Stage.FEED_LATENCY), STAGE_HELP[Stage.FEED_LATENCY], labels=["venue"]
        )
        for venue, histogram in sorted(recorder.feed_latency.items()):
            _add_histogram(feed, histogram, [venue], LATENCY_BUCKETS_NS, SECOND_NS)
        yield feed
        for stage, histogram in recorder.stages.items():
            family = HistogramMetricFamily(histogram_name(stage), STAGE_HELP[stage])
            if stage is Stage.DB_BATCH_ROWS:
                _add_histogram(family, histogram, [], ROW_BUCKETS, 1)
            else:
                _add_histogram(family, histogram, [], LATENCY_BUCKETS_NS, SECOND_NS)
            yield family

    def _summaries(self) -> Iterator[Metric]:
        recorder = self._metrics.recorder
        feed = Metric(summary_name(Stage.FEED_LATENCY), STAGE_HELP[Stage.FEED_LATENCY], "summary")
        for venue, histogram in sorted(recorder.feed_latency.items()):
            _add_summary(feed, histogram, {"venue": venue}, SECOND_NS)
        yield feed
        for stage, histogram in recorder.stages.items():
            family = Metric(summary_name(stage), STAGE_HELP[stage], "summary")
            scale = 1 if stage is Stage.DB_BATCH_ROWS else SECOND_NS
            _add_summary(family, histogram, {}, scale)
            yield family

    def _fanout(self) -> Iterator[Metric]:
        for name, value in int_fields(self._metrics.fanout).items():
            help_text = f"Fan-out {name.replace('_', ' ')}"
            if name in FANOUT_GAUGES:
                gauge = GaugeMetricFamily(f"{PREFIX}_{name}", f"{help_text} (now)")
                gauge.add_metric([], value)
                yield gauge
            else:
                counter = CounterMetricFamily(f"{PREFIX}_{name}", help_text)
                counter.add_metric([], value)
                yield counter

    def _feeds(self) -> Iterator[Metric]:
        venues = self._metrics.venues()
        names: list[str] = []
        for values in venues.values():
            names.extend(name for name in values if name not in names)
        for name in names:
            if name == "instruments":
                continue
            counter = CounterMetricFamily(
                f"{PREFIX}_feed_{name}",
                f"Feed {name.replace('_', ' ')} per venue",
                labels=["venue"],
            )
            for venue, values in venues.items():
                if name in values:
                    counter.add_metric([venue], values[name])
            yield counter
        states = GaugeMetricFamily(
            f"{PREFIX}_venue_instruments",
            "Instruments of a venue in each state",
            labels=["venue", "state"],
        )
        for venue, values in venues.items():
            for state, count in values.get("instruments", {}).items():
                states.add_metric([venue, state], count)
        yield states

    def _instruments(self) -> Iterator[Metric]:
        rows = self._metrics.instrument_rows()
        updates = CounterMetricFamily(
            f"{PREFIX}_instrument_updates",
            "Book snapshots published per instrument",
            labels=["instrument"],
        )
        rate = GaugeMetricFamily(
            f"{PREFIX}_instrument_update_rate",
            "Updates per second over the last activity period (what activity is from)",
            labels=["instrument"],
        )
        activity = GaugeMetricFamily(
            f"{PREFIX}_instrument_activity",
            "1 for the instrument's activity class (recomputed every period), else 0",
            labels=["instrument", "activity"],
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_instrument_state",
            "1 for the instrument's book state, else 0",
            labels=["instrument", "state"],
        )
        for name, row in rows.items():
            updates.add_metric([name], row["updates"])
            rate.add_metric([name], row["period_rate"])
            for kind in Activity:
                activity.add_metric([name, kind.value], int(row["activity"] == kind))
            for book_state in InstrumentState:
                state.add_metric([name, book_state.value], int(row["state"] == book_state))
        yield from (updates, rate, activity, state)

    def _storage(self) -> Iterator[Metric]:
        stats = self._metrics.storage()
        pending = GaugeMetricFamily(
            f"{PREFIX}_db_pending_rows", "Rows not committed yet (buffered plus in flight)"
        )
        healthy = GaugeMetricFamily(
            f"{PREFIX}_db_healthy", "1 while storage writes succeed, 0 while retrying"
        )
        counters = {
            "batches": "Committed storage batches",
            "rows_written": "Rows committed",
            "failures": "Failed write attempts",
            "dropped_bbo_rows": "BBO rows dropped because the buffer was full",
            "dropped_feed_events": "Feed events dropped because the buffer was full",
        }
        families = {
            name: CounterMetricFamily(f"{PREFIX}_db_{name}", help_text)
            for name, help_text in counters.items()
        }
        if stats is not None:
            pending.add_metric([], stats.pending_rows)
            healthy.add_metric([], int(stats.health is StorageHealth.HEALTHY))
            for name, family in families.items():
                family.add_metric([], getattr(stats, name))
        yield pending
        yield healthy
        yield from families.values()


def _add_summary(family: Metric, histogram: Histogram, labels: dict[str, str], scale: int) -> None:
    window = histogram.window
    for (label, _), value in zip(QUANTILES, window.quantiles, strict=True):
        family.add_sample(
            family.name,
            {**labels, "quantile": label},
            float("nan") if value is None else value / scale,
        )
    family.add_sample(f"{family.name}_count", labels, histogram.count)
    family.add_sample(f"{family.name}_sum", labels, histogram.total / scale)


def _add_histogram(
    family: HistogramMetricFamily,
    histogram: Histogram,
    labels: list[str],
    bounds: Sequence[int],
    scale: int,
) -> None:
    counts = cumulative_buckets(histogram, bounds)
    buckets = [(repr(bound / scale), count) for bound, count in zip(bounds, counts, strict=False)]
    buckets.append(("+Inf", counts[-1]))
    family.add_metric(labels, buckets, histogram.total / scale)


class PrometheusExporter:
    """Renders ``metrics`` in the text exposition format (version 0.0.4), with the
    process's ``process_*`` and ``python_info`` metrics."""

    content_type = CONTENT_TYPE

    def __init__(
        self,
        metrics: Metrics,
        *,
        role: str = "all",
        gauges: Sequence[ExtraGauge] = (),
        collectors: Iterable[Collector] = (),
    ) -> None:
        """``collectors`` add families of other parts (a node's bus state)."""
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(MetricsCollector(metrics, role=role, gauges=gauges))
        ProcessCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)
        for collector in collectors:
            self._registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self._registry)
