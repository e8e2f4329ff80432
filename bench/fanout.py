"""Scenario 2, fan-out: N subscribers in another process on loopback, marketcast against a
raw ``websockets.broadcast`` server fed the same synthetic BBO changes, in one run.

For each N and mode (one message per frame, or ``?batch=1``), each server is driven up a
ramp of offered deliveries per second (changes/s x N, every subscriber subscribed to
every instrument) until a step is not sustained: fewer than 95% of the offered
deliveries arrived, or the p99 publish-to-receive latency passed ``SUSTAINED_P99_MS``.
Each step runs ``warmup`` seconds, then measures ``seconds``; the subscriber process
counts frames and BBO messages and samples latencies (see ``bench/subscribers.py``); the
bench process measures its own CPU (server + publisher) over the same window.

Latencies: publish = client arrival - ``ts_send`` (the moment the frame's publish tick
encoded it); end-to-end = arrival - ``ts_recv``, which here is the moment the change was
published into the registry: the issue's publish-to-receive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from bench.report import (
    Progress,
    ScenarioResult,
    Table,
    Target,
    megabytes,
    ms,
    number,
    ratio,
)
from bench.servers import ServerKind, ServerProcess, ServerSpec, ServerWindow
from bench.subscribers import PoolSpec, SubscriberPool, WindowReport

SUSTAINED_SHARE = 0.95
SUSTAINED_P99_MS = 20.0
BATCH_TARGET_DELIVERIES = 1_000_000
BATCH_TARGET_P99_MS = 5.0
BATCH_TARGET_SUBSCRIBERS = 100
UNBATCHED_TARGET = 0.90
BATCH_SAMPLE_EVERY = 8
"""Batch frames carry many messages: decode one in 8 (over all subscribers) for latency,
count them all."""


@dataclass(frozen=True, slots=True)
class FanoutOptions:
    subscribers: tuple[int, ...]
    deliveries: tuple[int, ...]
    """The ramp: offered BBO deliveries per second (changes/s x subscribers)."""
    instruments: int = 100
    warmup: float = 0.5
    seconds: float = 2.0
    settle: float = 0.5
    """Pause after ``gc.collect()`` before each reading of the server's memory."""

    @classmethod
    def quick(cls) -> FanoutOptions:
        return cls(
            subscribers=(100, 1000),
            deliveries=(250_000, 1_000_000),
            warmup=0.3,
            seconds=0.7,
            settle=0.1,
        )

    @classmethod
    def full(cls) -> FanoutOptions:
        return cls(
            subscribers=(100, 1000, 5000),
            deliveries=(25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_000_000, 4_000_000),
        )


@dataclass(frozen=True, slots=True)
class Step:
    subscribers: int
    server: ServerWindow
    clients: WindowReport

    @property
    def offered(self) -> float:
        """Offered deliveries/s: changes really published per second x subscribers."""
        return self.server.offered * self.subscribers / self.server.seconds

    @property
    def delivered(self) -> float:
        return self.clients.messages / self.clients.seconds

    @property
    def frames(self) -> float:
        return self.clients.frames / self.clients.seconds

    @property
    def server_cpu(self) -> float:
        """Share of one core the server process (server + publisher) used."""
        return self.server.cpu_seconds / self.server.seconds

    @property
    def frames_per_core(self) -> float:
        """Frames/s per core of server CPU: what one core of the server pushes, whatever
        else (the subscribers, other processes) competes for the machine's cores."""
        return self.frames / self.server_cpu if self.server_cpu > 0 else 0.0

    @property
    def client_cpu(self) -> float:
        return self.clients.cpu_seconds / self.clients.seconds

    @property
    def sustained(self) -> bool:
        return (
            self.clients.closed == 0
            and self.clients.end_to_end.get_total_count() > 0
            and self.delivered >= SUSTAINED_SHARE * self.offered
            and _p(self.clients.end_to_end, 99) <= SUSTAINED_P99_MS * 1e6
        )


@dataclass(slots=True)
class Run:
    server: str
    subscribers: int
    batched: bool
    rss_idle: int = 0
    rss_connected: int = 0
    rss_end: int = 0
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        """The highest sustained step."""
        sustained = [step for step in self.steps if step.sustained]
        return sustained[-1] if sustained else None

    @property
    def peak_frames(self) -> float:
        return max((step.frames for step in self.steps), default=0.0)

    @property
    def peak_frames_per_core(self) -> float:
        return max((step.frames_per_core for step in self.steps), default=0.0)

    @property
    def peak_delivered(self) -> float:
        return max((step.delivered for step in self.steps), default=0.0)


def _p(histogram: HdrHistogram, percentile: float) -> float:
    return float(histogram.get_value_at_percentile(percentile))


def _latencies(histogram: HdrHistogram) -> str:
    if histogram.get_total_count() == 0:
        return "-"
    return " / ".join(ms(_p(histogram, p)) for p in (50, 99, 99.9))


def measure(
    spec: ServerSpec,
    subscribers: int,
    options: FanoutOptions,
    pool: SubscriberPool,
    progress: Progress,
) -> Run:
    """One server in a fresh process, ``subscribers`` clients, up the ramp."""
    mode = "batch=1" if spec.batched else "unbatched"
    with ServerProcess(spec) as server:
        run = Run(server.name, subscribers, spec.batched)
        run.rss_idle = server.rss(options.settle)
        progress.step(f"{server.name}, {mode}: connecting {subscribers:,} subscribers")
        pool.connect(
            PoolSpec(
                server.url,
                subscribers,
                requests=((server.subscribe_all,),) if server.subscribe_all else (),
                sample_every=BATCH_SAMPLE_EVERY if spec.batched else 1,
            )
        )
        run.rss_connected = server.rss(options.settle)
        for deliveries in options.deliveries:
            progress.step(
                f"{server.name}, {mode}, {subscribers:,} subscribers: "
                f"offering {number(deliveries)} deliveries/s"
            )
            step = _step(server, deliveries / subscribers, subscribers, options, pool)
            run.steps.append(step)
            if not step.sustained:
                break
        run.rss_end = server.rss(options.settle)
        pool.close_clients()
    return run


def _step(
    server: ServerProcess,
    rate: float,
    subscribers: int,
    options: FanoutOptions,
    pool: SubscriberPool,
) -> Step:
    server.drive(rate)
    try:
        time.sleep(options.warmup)
        server.window()
        pool.start()
        time.sleep(options.seconds)
        clients = pool.stop()
        window = server.measure()
    finally:
        server.halt()
    time.sleep(min(options.warmup, 0.3))  # let queued frames drain
    return Step(subscribers, window, clients)


def measure_all(options: FanoutOptions, progress: Progress) -> list[Run]:
    runs: list[Run] = []
    with SubscriberPool() as pool:
        for subscribers in options.subscribers:
            for batched in (False, True):
                for kind in ServerKind:
                    spec = ServerSpec(
                        kind, batched, options.instruments, max_connections=subscribers + 100
                    )
                    runs.append(measure(spec, subscribers, options, pool, progress))
    return runs


def run(options: FanoutOptions, progress: Progress) -> ScenarioResult:
    progress.scenario("fanout")
    runs = measure_all(options, progress)
    progress.done()
    return report(runs, options)


def report(runs: list[Run], options: FanoutOptions) -> ScenarioResult:
    result = ScenarioResult(
        key="fanout",
        title="2. Fan-out: subscribers in another process, loopback",
        how=(
            f"{options.instruments} instruments; every subscriber subscribes to the bbo of "
            "all of them; the bench publishes synthetic BBO changes (round-robin, a new bid "
            "each) at the offered rate. marketcast = MarketServer + Fanout over a "
            "BookRegistry; floor = a bare websockets server calling websockets.broadcast "
            "with each change encoded once (same bytes), measured in the same run. Ramp of "
            "offered deliveries/s (changes/s x subscribers), "
            f"{options.warmup:g} s warm-up + {options.seconds:g} s measured per step, "
            f"stopping after the first step not sustained (< {SUSTAINED_SHARE:.0%} delivered, "
            f"p99 end-to-end > {SUSTAINED_P99_MS:g} ms, or a client closed). Latencies in ms "
            "as p50 / p99 / p99.9: publish = ts_send -> client arrival, end-to-end = ts_recv "
            "(the publish into the registry) -> client arrival. CPU = share of one core "
            "used by that process during the window; frames/s per server core = frames/s / "
            "server CPU, the measure the unbatched target uses, since on a shared or 2-core "
            "machine the server rarely has a core to itself."
        ),
    )
    rows: list[tuple[str, ...]] = []
    for run in runs:
        for step in run.steps:
            rows.append(
                (
                    f"{run.subscribers:,}",
                    "batch=1" if run.batched else "unbatched",
                    run.server,
                    number(step.offered),
                    number(step.delivered),
                    number(step.frames),
                    _latencies(step.clients.publish),
                    _latencies(step.clients.end_to_end),
                    f"{step.server_cpu:.0%}",
                    number(step.frames_per_core),
                    f"{step.client_cpu:.0%}",
                    "yes" if step.sustained else "no",
                )
            )
    result.tables.append(
        Table(
            "every step",
            (
                "subscribers",
                "mode",
                "server",
                "offered/s",
                "delivered/s",
                "frames/s",
                "publish ms",
                "end-to-end ms",
                "server CPU",
                "frames/s per server core",
                "client CPU",
                "sustained",
            ),
            rows,
        )
    )
    summary: list[tuple[str, ...]] = []
    by_key = {(r.subscribers, r.batched, r.server): r for r in runs}
    for run in runs:
        if run.server != ServerKind.MARKETCAST:
            continue
        raw = by_key.get((run.subscribers, run.batched, ServerKind.RAW))
        best = run.best
        raw_best = raw.best if raw is not None else None
        per_connection = (run.rss_connected - run.rss_idle) / run.subscribers
        summary.append(
            (
                f"{run.subscribers:,}",
                "batch=1" if run.batched else "unbatched",
                number(best.delivered) if best else "none",
                number(raw_best.delivered) if raw_best else "none",
                number(run.peak_frames),
                number(raw.peak_frames) if raw else "-",
                ratio(run.peak_frames_per_core, raw.peak_frames_per_core) if raw else "-",
                _latencies(best.clients.end_to_end) if best else "-",
                megabytes(run.rss_end),
                f"{per_connection / 1024:.1f}",
            )
        )
        key = f"n{run.subscribers}_{'batched' if run.batched else 'unbatched'}"
        result.figures[f"{key}_marketcast_peak_frames_per_s"] = run.peak_frames
        result.figures[f"{key}_marketcast_frames_per_core"] = run.peak_frames_per_core
        result.figures[f"{key}_marketcast_peak_deliveries_per_s"] = run.peak_delivered
        if raw is not None:
            result.figures[f"{key}_raw_peak_frames_per_s"] = raw.peak_frames
            result.figures[f"{key}_raw_frames_per_core"] = raw.peak_frames_per_core
            if not run.batched:
                result.targets.append(
                    Target(
                        f"{run.subscribers:,} subscribers unbatched: frames/s per server core "
                        "vs raw websockets broadcast",
                        100 * run.peak_frames_per_core / raw.peak_frames_per_core
                        if raw.peak_frames_per_core
                        else 0.0,
                        100 * UNBATCHED_TARGET,
                        "%",
                    )
                )
        if run.batched and run.subscribers == BATCH_TARGET_SUBSCRIBERS:
            fast = [
                step.delivered
                for step in run.steps
                if step.clients.end_to_end.get_total_count()
                and _p(step.clients.end_to_end, 99) < BATCH_TARGET_P99_MS * 1e6
            ]
            result.targets.append(
                Target(
                    f"{BATCH_TARGET_SUBSCRIBERS} subscribers batch=1: deliveries/s with p99 "
                    f"end-to-end < {BATCH_TARGET_P99_MS:g} ms",
                    max(fast, default=0.0),
                    BATCH_TARGET_DELIVERIES,
                    "/s",
                )
            )
    result.tables.append(
        Table(
            "summary per subscriber count and mode",
            (
                "subscribers",
                "mode",
                "marketcast max sustained deliveries/s",
                "raw max sustained",
                "marketcast peak frames/s",
                "raw peak frames/s",
                "frames/s per server core vs raw",
                "end-to-end ms at max sustained",
                "server RSS MB",
                "KB per connection",
            ),
            summary,
        )
    )
    result.notes.append(
        "KB per connection = server RSS growth while the subscribers connected and "
        "subscribed, divided by their number (bbo of every instrument each)"
    )
    return result
