"""Scenario 7, cluster: fan-out through ingest -> NATS -> edges beside the single process,
in the same run.

Contenders, each in processes of their own, fed the same synthetic BBO changes
(``bench.servers.Publisher``, round-robin over the instruments) at ``rate`` changes/s,
every subscriber (``bench.subscribers``, another process per contender) subscribed to
the ``bbo`` of every instrument, unbatched:

- **single process**: ``bench.servers.MarketcastServer``, the changes published into
  its registry;
- **ingest -> NATS -> 1 edge** and **-> 2 edges**: a nats-server of the bench's own
  (``bus.natsserver``), an ingest node publishing the changes through the bus and edge
  nodes serving them (``bench.clusternodes``: ``marketcast run --role ingest|edge`` as
  the CLI wires them); with 2 edges the subscribers are split between them.

Trials are repeated and interleaved (``bench.ramp.climb``, one step). End-to-end
latency = arrival - ``ts_recv`` of the change, stamped when the ingest (or the single
process) published it, so on an edge it spans the bus hop; the **bus hop's added
latency** is the edge's median p50 / p99 minus the single process's. **CPU per
delivery** = the CPU time of the serving processes (the single process, or every edge)
/ messages delivered.

The ingest's full path with the bus against without (issue 11's >= 85%) is scenario
7b, ``bench.ingestbus``; order entry through an edge to a positions shard is a
contender of scenario 6, ``bench.orders``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

from bench.clusternodes import NodeProcess, NodeSpec
from bench.leanws import arrival_clock_of
from bench.ramp import Criteria, RepeatedStep, climb, latencies, median_percentile
from bench.report import Progress, ScenarioResult, Table, Target, latency_histogram, number
from bench.servers import ServerKind, ServerProcess, ServerSpec
from bench.subscribers import PoolSpec, SubscriberPool

CRITERIA = Criteria(0.95, 20.0)
HOP_P50_TARGET_MS = 0.5
HOP_P99_TARGET_MS = 2.0
CPU_TARGET = 1.10
"""An edge's CPU per delivery within 10% of the single process's."""
HOP_SUBSCRIBERS = 100
CPU_SUBSCRIBERS = 1000
SINGLE = "single process"


def edges_name(edges: int) -> str:
    return f"ingest -> NATS -> {edges} edge{'s' if edges > 1 else ''}"


DELIVERED_SHARE = 0.95
"""CPU per delivery is judged only where every contender delivered this share of what
was offered: a step whose subscribers could not keep up says nothing about the servers."""


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    subscribers: tuple[int, ...] = (HOP_SUBSCRIBERS, CPU_SUBSCRIBERS)
    rate: float = 1000.0
    """BBO changes per second (at every subscriber count but the largest of several)."""
    cpu_rate: float = 50.0
    """BBO changes per second at the largest of several subscriber counts, where CPU per
    delivery is judged: 50 x 1,000 subscribers = 50,000 deliveries/s, what one subscriber
    process of 1,000 lean clients reads on the benchmark VM (scenario 2). At 1,000
    changes/s (1,000,000 deliveries/s) their sockets filled until the servers closed them
    as slow consumers (923 of 1,000 on the edge, 2026-12-05), so later trials delivered
    nothing and CPU per delivery was never judged."""
    instruments: int = 100
    edges: tuple[int, ...] = (1, 2)
    warmup: float = 0.5
    seconds: float = 2.0
    repeats: int = 3

    def rate_at(self, subscribers: int) -> float:
        """The BBO changes per second offered to ``subscribers``."""
        several = len(self.subscribers) > 1
        return self.cpu_rate if several and subscribers == max(self.subscribers) else self.rate

    @classmethod
    def quick(cls) -> ClusterOptions:
        return cls(subscribers=(20,), rate=200.0, edges=(1,), warmup=0.3, seconds=0.5)

    @classmethod
    def full(cls) -> ClusterOptions:
        return cls()


@dataclass(frozen=True, slots=True)
class ClusterTrial:
    """One measured window of one contender (a ``bench.ramp.Trial``)."""

    offered: float
    """Deliveries offered per second (changes published x subscribers)."""
    delivered: float
    end_to_end: HdrHistogram
    serving_cpu: float
    """CPU seconds of the serving processes (single process, or all edges) per second."""
    ingest_cpu: float
    """CPU seconds of the ingest per second (``nan``: single process)."""
    closed: int
    kernel_reads: int = 0
    """Client reads stamped by the kernel (``bench.leanws.ReadCounts``)."""
    fallback_reads: int = 0

    @property
    def p99_ns(self) -> float:
        if not self.end_to_end.get_total_count():
            return math.inf
        return float(self.end_to_end.get_value_at_percentile(99))

    @property
    def failures(self) -> int:
        return self.closed

    @property
    def cpu_per_delivery_us(self) -> float:
        return self.serving_cpu / self.delivered * 1e6 if self.delivered else math.nan


class Contender:
    """What one trial needs: who publishes, who serves, whose clients measure."""

    def __init__(
        self,
        drive: Callable[[float], None],
        halt: Callable[[], None],
        window: Callable[[], None],
        measure: Callable[[], tuple[float, float, int, float, float]],
        pools: list[SubscriberPool],
        subscribers: int,
    ) -> None:
        self.drive, self.halt, self.window, self.measure = drive, halt, window, measure
        self.pools = pools
        self.subscribers = subscribers

    def trial(self, rate: float, options: ClusterOptions) -> ClusterTrial:
        self.drive(rate)
        try:
            time.sleep(options.warmup)
            self.window()
            for pool in self.pools:
                pool.start()
            time.sleep(options.seconds)
            reports = [pool.stop() for pool in self.pools]
            seconds, ingest_cpu, offered, serving_cpu, _ = self.measure()
        finally:
            self.halt()
        time.sleep(0.2)
        end_to_end = latency_histogram()
        for report in reports:
            end_to_end.add(report.end_to_end)
        window = max(report.seconds for report in reports)
        return ClusterTrial(
            offered=offered * self.subscribers / seconds,
            delivered=sum(report.messages for report in reports) / window,
            end_to_end=end_to_end,
            serving_cpu=serving_cpu / seconds,
            ingest_cpu=ingest_cpu / seconds,
            closed=sum(report.closed for report in reports),
            kernel_reads=sum(report.kernel_reads for report in reports),
            fallback_reads=sum(report.fallback_reads for report in reports),
        )


def _connect(pool: SubscriberPool, url: str, count: int, subscribe: bytes) -> SubscriberPool:
    pool.connect(PoolSpec(url, count, requests=((subscribe,),)))
    return pool


def measure_subscribers(
    subscribers: int, options: ClusterOptions, bus_url: str, progress: Progress
) -> dict[str, list[RepeatedStep[ClusterTrial]]]:
    contenders: dict[str, Contender] = {}
    with contextlib.ExitStack() as stack:
        progress.step(f"{SINGLE}: {subscribers:,} subscribers")
        single = stack.enter_context(
            ServerProcess(
                ServerSpec(
                    ServerKind.MARKETCAST,
                    False,
                    options.instruments,
                    max_connections=subscribers + 100,
                )
            )
        )
        pool = stack.enter_context(SubscriberPool())
        assert single.subscribe_all is not None
        _connect(pool, single.url, subscribers, single.subscribe_all)

        def single_measure(
            server: ServerProcess = single,
        ) -> tuple[float, float, int, float, float]:
            window = server.measure()
            return window.seconds, math.nan, window.offered, window.cpu_seconds, 0.0

        contenders[SINGLE] = Contender(
            single.drive, single.halt, single.window, single_measure, [pool], subscribers
        )
        for count in options.edges:
            name = edges_name(count)
            progress.step(f"{name}: {subscribers:,} subscribers")
            prefix = f"bench{os.getpid()}n{subscribers}e{count}"
            spec = NodeSpec("ingest", bus_url, prefix, options.instruments, subscribers + 100)
            ingest = stack.enter_context(NodeProcess(spec))
            edges = [
                stack.enter_context(
                    NodeProcess(
                        NodeSpec("edge", bus_url, prefix, options.instruments, subscribers + 100)
                    )
                )
                for _ in range(count)
            ]
            pools = []
            for index, edge in enumerate(edges):
                share = subscribers // count + (1 if index < subscribers % count else 0)
                pools.append(
                    _connect(
                        stack.enter_context(SubscriberPool()), edge.url, share, edge.subscribe_all
                    )
                )

            def window(ingest: NodeProcess = ingest, edges: list[NodeProcess] = edges) -> None:
                ingest.window()
                for edge in edges:
                    edge.window()

            def measure(
                ingest: NodeProcess = ingest, edges: list[NodeProcess] = edges
            ) -> tuple[float, float, int, float, float]:
                seconds, ingest_cpu, offered = ingest.measure()
                serving = sum(edge.measure()[1].process for edge in edges)
                return seconds, ingest_cpu.process, offered, serving, 0.0

            contenders[name] = Contender(
                ingest.drive, ingest.halt, window, measure, pools, subscribers
            )

        def trial(name: str, rate: float) -> ClusterTrial:
            progress.step(f"{name}, {subscribers:,} subscribers: {number(rate)} changes/s")
            return contenders[name].trial(rate, options)

        steps = climb(
            (options.rate_at(subscribers),),
            list(contenders),
            trial,
            repeats=options.repeats,
            criteria=CRITERIA,
        )
    return steps


def run(options: ClusterOptions, progress: Progress) -> ScenarioResult:
    from bus.natsserver import NatsServer

    progress.scenario("cluster")
    results: dict[int, dict[str, list[RepeatedStep[ClusterTrial]]]] = {}
    with NatsServer() as nats:
        for subscribers in options.subscribers:
            results[subscribers] = measure_subscribers(subscribers, options, nats.url, progress)
    progress.done()
    return report(results, options)


def _end_to_end(trial: ClusterTrial) -> HdrHistogram:
    return trial.end_to_end


def report(
    results: dict[int, dict[str, list[RepeatedStep[ClusterTrial]]]], options: ClusterOptions
) -> ScenarioResult:
    result = ScenarioResult(
        key="cluster",
        title="7. Cluster: fan-out through ingest -> NATS -> edges, beside the single process",
        how=(
            f"{options.instruments} instruments, BBO changes (round-robin) at "
            + ", ".join(
                f"{options.rate_at(count):,g}/s to {count:,} subscribers"
                for count in options.subscribers
            )
            + ", every subscriber (another process) subscribed to the bbo of all "
            "of them, unbatched. single process = MarketServer + Fanout over a registry the "
            "changes are published into; cluster = a nats-server, an ingest node (`run --role "
            "ingest`) publishing the changes through the bus, and 1 or 2 edge nodes (`run "
            "--role edge`) the subscribers are split between. "
            f"{options.repeats} trials per contender, interleaved, {options.warmup:g} s "
            f"warm-up + {options.seconds:g} s measured each; medians. End-to-end = arrival - "
            "the moment the change was published (at the ingest: it spans the bus hop). "
            "CPU per delivery = CPU of the serving processes (the single process, or every "
            "edge) / messages delivered."
        ),
    )
    rows: list[tuple[str, ...]] = []
    for subscribers, steps in results.items():
        single_step = steps[SINGLE][0] if steps.get(SINGLE) else None
        for name, ladder in steps.items():
            for step in ladder:
                cpu_us = step.median_of(lambda t: t.cpu_per_delivery_us)
                ingest = step.median_of(lambda t: t.ingest_cpu)
                rows.append(
                    (
                        f"{subscribers:,}",
                        name,
                        number(step.offered),
                        number(step.delivered),
                        latencies(step, _end_to_end),
                        f"{step.median_of(lambda t: t.serving_cpu):.0%}",
                        f"{cpu_us:.2f}",
                        "-" if math.isnan(ingest) else f"{ingest:.0%}",
                    )
                )
        if single_step is None:
            continue
        single_p50 = median_percentile(single_step, _end_to_end, 50)
        single_p99 = median_percentile(single_step, _end_to_end, 99)
        single_cpu = single_step.median_of(lambda t: t.cpu_per_delivery_us)
        for count in options.edges:
            edge_steps = steps.get(edges_name(count))
            if not edge_steps:
                continue
            step = edge_steps[0]
            hop_p50 = (median_percentile(step, _end_to_end, 50) - single_p50) / 1e6
            hop_p99 = (median_percentile(step, _end_to_end, 99) - single_p99) / 1e6
            cpu = step.median_of(lambda t: t.cpu_per_delivery_us)
            key = f"n{subscribers}_edges{count}"
            result.figures[f"{key}_hop_p50_ms"] = hop_p50
            result.figures[f"{key}_hop_p99_ms"] = hop_p99
            result.figures[f"{key}_cpu_per_delivery_vs_single"] = cpu / single_cpu
            if count == 1 and subscribers == min(options.subscribers):
                result.targets += [
                    Target(
                        f"bus hop, {subscribers:,} subscribers, {number(options.rate)} "
                        "changes/s: added end-to-end p50 over the single process",
                        hop_p50,
                        HOP_P50_TARGET_MS,
                        " ms",
                        higher_is_better=False,
                    ),
                    Target(
                        f"bus hop, {subscribers:,} subscribers: added end-to-end p99",
                        hop_p99,
                        HOP_P99_TARGET_MS,
                        " ms",
                        higher_is_better=False,
                    ),
                ]
            if subscribers == max(options.subscribers):
                short = min(step.delivered_share, single_step.delivered_share)
                if short < DELIVERED_SHARE:
                    result.notes.append(
                        f"{edges_name(count)}, {subscribers:,} subscribers: CPU per delivery "
                        f"not judged: a contender delivered only {short:.0%} of what was "
                        "offered (the subscriber process is the limit on this machine)"
                    )
                else:
                    result.targets.append(
                        Target(
                            f"{edges_name(count)}, {subscribers:,} subscribers, "
                            f"{options.rate_at(subscribers):,g} changes/s: edge CPU "
                            "per delivery vs the single process's",
                            100 * cpu / single_cpu,
                            100 * CPU_TARGET,
                            "%",
                            higher_is_better=False,
                        )
                    )
    result.tables.append(
        Table(
            "every contender (medians over the trials)",
            (
                "subscribers",
                "contender",
                "offered deliveries/s",
                "delivered/s",
                "end-to-end ms",
                "serving CPU",
                "CPU µs per delivery",
                "ingest CPU",
            ),
            rows,
        )
    )
    result.notes.append(
        "N cores: each edge writes to its own share of the subscribers, so with a core per "
        "edge (and one for the ingest) the deliveries/s a cluster holds grow with the edges "
        "as long as an edge's CPU per delivery stays near the single process's"
    )
    result.notes.append("the ingest's cost of publishing to the bus is scenario 7b (ingestbus)")
    result.notes.append(
        arrival_clock_of(
            trial
            for steps in results.values()
            for ladder in steps.values()
            for step in ladder
            for trial in step.trials
        )
    )
    return result
