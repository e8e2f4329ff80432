"""Scenario 6, order entry: many websocket connections sending ``position.open``; acks/s
sustained and ack latency on SQLite and on PostgreSQL, against floors in the same run.

Contenders, each in processes of its own, all up the same ramp of offered opens per
second together (``bench.ramp.climb``: every step ``repeats`` times, interleaved,
judged by the median of its trials):

- **marketcast on SQLite / on PostgreSQL**: the single-process server as ``marketcast
  run`` wires it (``bench.orderservers``), ``connections`` clients in another process
  (``bench.orderclients``), each authenticated as an account of its own, sending opens
  open-loop at the offered rate; an ack comes back once the position's group commit is
  done.
- **edge -> positions shard on SQLite / on PostgreSQL**: the same clients against an
  edge that routes each open over NATS to one positions shard, which acks after its
  group commit (``bench.orderservers.ClusterOrderServer``: a nats-server of the
  bench's own, an ingest, a shard and an edge, each in a process of its own).
- **lean Python server on SQLite** (a reference, not a floor): the same clients against
  the least a Python server does per open (``bench.leanorders``: token auth, the open's
  checks, the bare SQLite floor's group commit, marketcast's ack), so that a run shows
  how much of marketcast's limit is CPython's and the machine's, and how much its own.
- **websocket request/reply floor**: the same clients and frames against a bare
  ``websockets`` server that answers each with an ack-shaped frame, no storage.
- **bare storage floors**: the same position rows written in 5 ms group commits with
  ``executemany`` (SQLite) or ``COPY`` (PostgreSQL), no server (``bench.positionfloor``);
  their "acks" are committed rows and their latency is row added -> commit done.

A step is sustained when, by the median of its trials, the clients really offered >= 95%
of the rate, >= 95% of what they sent was acked in the window, the p99 ack latency was
<= ``ACK_P99_MS`` and no request was refused (nor a connection closed). The headline per
backend is marketcast's highest sustained rate beside its floors: the binding floor is
the lower of the websocket floor and that backend's storage floor (marketcast needs
both); a floor that sustained the whole ramp is only known to be at least its top.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from hdrh.histogram import HdrHistogram

from bench.leanws import arrival_clock_of
from bench.orderclients import OrderClientPool, OrderPoolSpec, OrderWindow, auth_requests
from bench.orderservers import (
    ClusterOrderServer,
    OrderServer,
    OrderServerKind,
    OrderServerProcess,
    OrderServerSpec,
)
from bench.positionfloor import FloorSpec, StorageFloorProcess, StorageTrial
from bench.postgres import drop_schemas, postgres_reachable
from bench.ramp import (
    Criteria,
    RepeatedStep,
    climb,
    highest_sustained,
    latencies,
    median,
    p99_range,
    value_range,
)
from bench.report import Progress, ScenarioResult, Table, Target, number, ratio
from bench.servers import instrument_names
from bench.storage import DEFAULT_PG_DSN
from publish.metrics.cpu import CpuTimes
from publish.metrics.hdr import Summary

if TYPE_CHECKING:
    from bus.natsserver import NatsServer

SUSTAINED_SHARE = 0.95
ACK_P99_MS = 10.0
CRITERIA = Criteria(SUSTAINED_SHARE, ACK_P99_MS)
ACKS_TARGET = {"sqlite": 20_000, "postgres": 15_000}
"""Acks/s sustained (with p99 <= ``ACK_P99_MS``) by the single process (issue 12)."""
FLOOR_SHARE_TARGET = 0.60
DRAIN_SECONDS = 0.2
"""Pause after a trial so that the acks still in flight do not land in the next one."""


@dataclass(frozen=True, slots=True)
class OrdersOptions:
    rates: tuple[int, ...]
    """The ramp: offered ``position.open`` requests per second."""
    connections: int = 200
    instruments: int = 10
    warmup: float = 0.5
    seconds: float = 1.0
    repeats: int = 3
    window_ms: float = 5.0
    """Group commit window of the storage floors (marketcast's default)."""
    pg_dsn: str | None = DEFAULT_PG_DSN
    """``None``: SQLite only."""
    cluster: bool = True
    """Also through an edge to a positions shard (needs nats-server)."""

    @classmethod
    def quick(cls) -> OrdersOptions:
        return cls(rates=(2_000,), connections=10, warmup=0.15, seconds=0.25)

    @classmethod
    def full(cls) -> OrdersOptions:
        return cls(
            rates=(
                250,
                500,
                1_000,
                2_500,
                5_000,
                7_500,
                10_000,
                12_500,
                15_000,
                20_000,
                25_000,
                30_000,
                40_000,
                50_000,
                60_000,
                80_000,
            ),
        )


class Contender(StrEnum):
    MARKETCAST_SQLITE = "marketcast on SQLite"
    MARKETCAST_POSTGRES = "marketcast on PostgreSQL"
    EDGE_SQLITE = "edge -> positions shard on SQLite"
    EDGE_POSTGRES = "edge -> positions shard on PostgreSQL"
    LEAN_SQLITE = "lean Python server on SQLite"
    WEBSOCKET_FLOOR = "websocket request/reply, no storage"
    SQLITE_FLOOR = "bare SQLite executemany, group commit"
    POSTGRES_FLOOR = "bare PostgreSQL COPY, group commit"


@dataclass(frozen=True, slots=True)
class Backend:
    marketcast: Contender
    """The single process."""
    edge: Contender
    """Through an edge to a positions shard."""
    floor: Contender
    """The bare storage floor."""


BACKENDS = {
    "sqlite": Backend(Contender.MARKETCAST_SQLITE, Contender.EDGE_SQLITE, Contender.SQLITE_FLOOR),
    "postgres": Backend(
        Contender.MARKETCAST_POSTGRES, Contender.EDGE_POSTGRES, Contender.POSTGRES_FLOOR
    ),
}


@dataclass(frozen=True, slots=True)
class OrderTrial:
    """One measured window of one contender (a ``bench.ramp.Trial``)."""

    offered: float
    delivered: float
    """Acks (or committed rows) per second."""
    latency: HdrHistogram
    errors: dict[str, int]
    closed: int
    server_cpu: float
    """Share of one core used by the server (or the storage floor's) process."""
    client_cpu: float
    """Share of one core used by the client process (``nan``: none)."""
    shard_cpu: float = math.nan
    """Share of one core used by the positions shard (``nan``: none, one process)."""
    server_loop_cpu: float = math.nan
    """Share of one core used by the server's event loop thread alone (``nan``: not
    read, the storage floors)."""
    shard_loop_cpu: float = math.nan
    """Share of one core used by the positions shard's event loop thread alone."""
    kernel_reads: int = 0
    """Client reads stamped by the kernel (``bench.leanws.ReadCounts``; floors: none)."""
    fallback_reads: int = 0
    server_op: Summary | None = None
    """The server's own time per op over the window: its ``position_op`` stage, an op
    submitted -> its answer queued (an edge's spans the bus and the shard); floors:
    ``None``."""
    shard_op: Summary | None = None
    """The positions shard's own time per op over the window: its ``position_op`` stage,
    an op in from the bus -> its answer published (one process: ``None``)."""

    @property
    def p99_ns(self) -> float:
        if not self.latency.get_total_count():
            return math.inf
        return float(self.latency.get_value_at_percentile(99))

    @property
    def failures(self) -> int:
        return sum(self.errors.values()) + self.closed

    @classmethod
    def from_clients(
        cls,
        window: OrderWindow,
        server: CpuTimes,
        shard: CpuTimes | None = None,
        server_op: Summary | None = None,
        shard_op: Summary | None = None,
    ) -> OrderTrial:
        seconds = window.seconds
        return cls(
            offered=window.sent / seconds,
            delivered=window.acked / seconds,
            latency=window.latency,
            errors=window.errors,
            closed=window.closed,
            server_cpu=server.process / seconds,
            client_cpu=window.cpu_seconds / seconds,
            shard_cpu=math.nan if shard is None else shard.process / seconds,
            server_loop_cpu=server.event_loop / seconds,
            shard_loop_cpu=math.nan if shard is None else shard.event_loop / seconds,
            kernel_reads=window.kernel_reads,
            fallback_reads=window.fallback_reads,
            server_op=server_op,
            shard_op=shard_op,
        )

    @classmethod
    def from_storage(cls, trial: StorageTrial) -> OrderTrial:
        return cls(
            offered=trial.offered,
            delivered=trial.delivered,
            latency=trial.latency,
            errors={},
            closed=0,
            server_cpu=trial.cpu_seconds / trial.seconds,
            client_cpu=math.nan,
        )


Steps = dict[Contender, list[RepeatedStep[OrderTrial]]]


@dataclass(slots=True)
class OrdersRun:
    steps: Steps
    notes: list[str] = field(default_factory=list)


def _websocket_trial(
    server: OrderServer, pool: OrderClientPool, options: OrdersOptions, rate: float
) -> OrderTrial:
    pool.drive(rate)
    try:
        time.sleep(options.warmup)
        server.window()
        pool.window()
        time.sleep(options.seconds)
        window = pool.measure()
        cpu = server.measure()
        shard_cpu = server.measure_shard()
        server_op = server.server_ops()
        shard_op = server.shard_ops()
    finally:
        pool.halt()
    time.sleep(DRAIN_SECONDS)
    return OrderTrial.from_clients(window, cpu, shard_cpu, server_op, shard_op)


def _storage_trial(floor: StorageFloorProcess, options: OrdersOptions, rate: float) -> OrderTrial:
    return OrderTrial.from_storage(floor.trial(rate, options.warmup, options.seconds))


def _start_bus(stack: contextlib.ExitStack, notes: list[str]) -> NatsServer | None:
    """A nats-server of the run's own for the cluster contenders (``None``: none, noted)."""
    from bus.exceptions import NatsServerError
    from bus.natsserver import NatsServer

    try:
        return stack.enter_context(NatsServer())
    except NatsServerError as exc:
        notes.append(f"edge -> positions shard skipped: {exc}")
        return None


def measure_all(options: OrdersOptions, progress: Progress) -> OrdersRun:
    secret = os.urandom(24).hex()
    auth = auth_requests(secret, options.connections)
    instruments = tuple(instrument_names(options.instruments))
    notes: list[str] = []
    backends = ["sqlite"]
    schemas: list[str] = []
    dsn = options.pg_dsn
    if dsn is None:
        notes.append("PostgreSQL skipped (--no-postgres)")
    elif (why := postgres_reachable(dsn)) is not None:
        notes.append(f"PostgreSQL skipped: {why}")
    else:
        backends.append("postgres")
    trials: dict[Contender, Callable[[float], OrderTrial]] = {}
    try:
        with contextlib.ExitStack() as stack:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))

            bus = _start_bus(stack, notes) if options.cluster else None

            def websocket(
                contender: Contender, spec: OrderServerSpec, cluster: bool = False
            ) -> None:
                progress.step(f"{contender}: starting, {options.connections:,} connections")
                server: OrderServer
                if cluster:
                    assert bus is not None
                    prefix = f"benchorders{os.getpid()}{spec.backend}"
                    server = stack.enter_context(
                        ClusterOrderServer(spec, bus.url, prefix, directory)
                    )
                else:
                    server = stack.enter_context(OrderServerProcess(spec))
                pool = stack.enter_context(OrderClientPool())
                pool.connect(OrderPoolSpec(server.url, auth, instruments))
                trials[contender] = lambda rate: _websocket_trial(server, pool, options, rate)

            def storage(contender: Contender, spec: FloorSpec) -> None:
                progress.step(f"{contender}: starting")
                floor = stack.enter_context(StorageFloorProcess(spec))
                trials[contender] = lambda rate: _storage_trial(floor, options, rate)

            for backend in backends:
                contenders = BACKENDS[backend]
                schema = f"marketcast_bench_orders_{os.getpid()}_{backend}"
                floor_schema = f"{schema}_floor"
                edge_schema = f"{schema}_edge"
                if backend == "postgres":
                    schemas += [schema, floor_schema, edge_schema]
                spec = OrderServerSpec(
                    OrderServerKind.MARKETCAST,
                    backend=backend,
                    instruments=instruments,
                    connections=options.connections,
                    secret=secret,
                    pg_dsn=dsn or "",
                    pg_schema=schema,
                )
                websocket(contenders.marketcast, spec)
                if backend == "sqlite":
                    websocket(Contender.LEAN_SQLITE, replace(spec, kind=OrderServerKind.LEAN))
                if bus is not None:
                    websocket(contenders.edge, replace(spec, pg_schema=edge_schema), cluster=True)
                storage(
                    contenders.floor,
                    FloorSpec(
                        backend,
                        options.connections,
                        instruments,
                        window_ms=options.window_ms,
                        path=str(directory / "floor.db"),
                        dsn=dsn or "",
                        schema=floor_schema,
                    ),
                )
            websocket(
                Contender.WEBSOCKET_FLOOR,
                OrderServerSpec(OrderServerKind.WEBSOCKET_FLOOR, connections=options.connections),
            )

            def trial(contender: Contender, rate: float) -> OrderTrial:
                progress.step(f"{contender}: offering {number(rate)} opens/s")
                return trials[contender](rate)

            ordered = [contender for contender in Contender if contender in trials]
            steps = climb(options.rates, ordered, trial, repeats=options.repeats, criteria=CRITERIA)
    finally:
        if dsn is not None and schemas:
            with contextlib.suppress(OSError):
                asyncio.run(drop_schemas(dsn, schemas))
    return OrdersRun(steps, notes)


def run(options: OrdersOptions, progress: Progress) -> ScenarioResult:
    progress.scenario("orders")
    measured = measure_all(options, progress)
    progress.done()
    return report(measured, options)


def _latency(trial: OrderTrial) -> HdrHistogram:
    return trial.latency


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _cpu_cell(process: float, loop: float) -> str:
    """A process's share of a core, with its event loop thread's where read."""
    return _share(process) if math.isnan(loop) else f"{_share(process)} (loop {loop:.0%})"


def _sustained_text(steps: list[RepeatedStep[OrderTrial]], options: OrdersOptions) -> str:
    best = highest_sustained(steps, CRITERIA)
    if best is None:
        return "none"
    top = best.rate == options.rates[-1]
    return f"{'>= ' if top else ''}{number(best.rate)}"


BUSY_SHARE = 0.9
"""A process, or a server's event loop thread, at this share of one core or more is taken
to be the limit."""


def limit_reason(step: RepeatedStep[OrderTrial], *, stores: bool = True) -> str:
    """What most likely stopped a contender at ``step`` (by the medians); ``stores``: it
    commits what it acks (every contender but the websocket floor).

    A server whose event loop thread is read is CPU-bound when that thread is: its
    process may use more than a core (storage threads beside the loop) while the loop,
    which serves every connection, still has time to spare."""
    server = step.median_of(lambda trial: trial.server_cpu)
    client = step.median_of(lambda trial: trial.client_cpu)
    if step.failures:
        return "requests refused or connections closed (see the refusals below)"
    if step.offered < CRITERIA.share * step.rate:
        driver = server if math.isnan(client) else client
        return f"the driver could not offer the rate (its process at {driver:.0%} of a core)"
    server_loop = step.median_of(lambda trial: trial.server_loop_cpu)
    if (bound := _cpu_bound("server", server, server_loop)) is not None:
        return bound
    shard = step.median_of(lambda trial: trial.shard_cpu)
    if (
        bound := _cpu_bound(
            "positions shard", shard, step.median_of(lambda trial: trial.shard_loop_cpu)
        )
    ) is not None:
        return bound
    if client >= BUSY_SHARE:
        return f"the client process is CPU-bound ({client:.0%} of a core)"
    if not stores:
        waits = (
            "no process is CPU-bound by its average over the window, so its tail is the "
            "loop's turns and the machine's scheduling, not storage (it has none)"
        )
    elif server >= BUSY_SHARE:
        waits = (
            "its loop is not saturated; its other threads (storage) use "
            f"{server - server_loop:.0%} of a core beside it, so the tail is waiting "
            "(commits, and threads queueing for the machine's cores) rather than computing"
        )
    elif not math.isnan(shard):
        waits = (
            "it waits (the round trip over the bus to the positions shard, and the shard's "
            "commit) rather than computes"
        )
    else:
        waits = "it waits (storage commits) rather than computes"
    inside = _op_ms(step, "p99")
    own = (
        ""
        if inside is None
        else f"; the server's own part (op submitted -> ack queued) had a p99 of {inside:.3g} ms"
    )
    if (in_shard := _op_ms(step, "p99", shard=True)) is not None:
        own += (
            f", the shard's (op in from the bus -> answer published) {in_shard:.3g} ms: the "
            "rest is the bus both ways and the edge's own turns"
        )
    return (
        f"latency (p99 {step.p99_ns / 1e6:.3g} ms, {step.delivered_share:.0%} acked) with the "
        f"{_cpu_text(server, server_loop)}: {waits}{own}"
    )


def _cpu_bound(what: str, process: float, loop: float) -> str | None:
    """Says ``what`` is CPU-bound when its event loop thread is (or, where that thread is
    not read, its process); ``None`` when it is not."""
    if math.isnan(loop):
        if process >= BUSY_SHARE:
            return f"the {what} process is CPU-bound ({process:.0%} of a core)"
        return None
    if loop >= BUSY_SHARE:
        return (
            f"the {what}'s event loop is CPU-bound (its thread at {loop:.0%} of a core, the "
            f"process at {process:.0%})"
        )
    return None


def _cpu_text(process: float, loop: float) -> str:
    if math.isnan(loop):
        return f"server process at {process:.0%} of a core"
    return f"server's event loop at {loop:.0%} of a core (the process at {process:.0%})"


def _op_ms(step: RepeatedStep[OrderTrial], percentile: str, *, shard: bool = False) -> float | None:
    """The server's (``shard``: the positions shard's) own ``percentile`` (``p50``,
    ``p99``) per op, ms, median over the trials that read it (``None``: none did)."""
    summaries = (trial.shard_op if shard else trial.server_op for trial in step.trials)
    values = [
        getattr(summary, percentile) / 1e6
        for summary in summaries
        if summary is not None and summary.count
    ]
    return median(values) if values else None


def _own_time(step: RepeatedStep[OrderTrial], *, shard: bool = False) -> str:
    p50, p99 = _op_ms(step, "p50", shard=shard), _op_ms(step, "p99", shard=shard)
    return "-" if p50 is None or p99 is None else f"{p50:.3g} / {p99:.3g}"


def _ack_figures(result: ScenarioResult, key: str, best: RepeatedStep[OrderTrial] | None) -> None:
    """The ack latency percentiles (medians over the trials) at the highest sustained step."""
    if best is None:
        return
    for name, percentile in (("p50", 50), ("p99", 99), ("p999", 99.9)):
        values = [
            float(t.latency.get_value_at_percentile(percentile)) / 1e6
            for t in best.trials
            if t.latency.get_total_count()
        ]
        result.figures[f"{key}_ack_{name}_ms"] = median(values)
    for name in ("p50", "p99"):
        for part, shard in (("server_op", False), ("shard_op", True)):
            inside = _op_ms(best, name, shard=shard)
            if inside is not None:
                result.figures[f"{key}_{part}_{name}_ms"] = inside


def _lean_reference(result: ScenarioResult, steps: Steps, options: OrdersOptions) -> None:
    """The lean Python server beside marketcast on SQLite: what the same job costs in
    CPython without marketcast's layers (``bench.leanorders``)."""
    lean_steps = steps.get(Contender.LEAN_SQLITE)
    if lean_steps is None or Contender.MARKETCAST_SQLITE not in steps:
        return
    lean = highest_sustained(lean_steps, CRITERIA)
    ours = highest_sustained(steps[Contender.MARKETCAST_SQLITE], CRITERIA)
    lean_rate = lean.rate if lean else 0.0
    result.figures["lean_sqlite_sustained_acks_per_s"] = lean_rate
    share = f" ({ratio(ours.rate if ours else 0.0, lean_rate)} of it)" if lean_rate else ""
    result.notes.append(
        f"reference: the {Contender.LEAN_SQLITE} (handshake, simple frames, token auth, the "
        "open's checks, the bare SQLite group commit, marketcast's ack; nothing else) "
        f"sustained {_sustained_text(lean_steps, options)} opens/s, marketcast on SQLite "
        f"{_sustained_text(steps[Contender.MARKETCAST_SQLITE], options)}{share}"
        + _loop_costs(result, ours, lean_steps)
    )


def _loop_costs(
    result: ScenarioResult,
    ours: RepeatedStep[OrderTrial] | None,
    lean_steps: list[RepeatedStep[OrderTrial]],
) -> str:
    """The event loop's CPU per open of marketcast on SQLite and of the lean server at
    marketcast's highest sustained rate (figures ``sqlite_loop_us_per_open``,
    ``lean_sqlite_loop_us_per_open``): what each open costs the one thread that serves
    every connection. ``""`` when either was not measured there."""
    if ours is None:
        return ""
    lean = next((step for step in lean_steps if step.rate == ours.rate), None)
    if lean is None:
        return ""
    own, lean_cost = ours.median_of(_loop_us_per_open), lean.median_of(_loop_us_per_open)
    if math.isnan(own) or math.isnan(lean_cost):
        return ""
    result.figures["sqlite_loop_us_per_open"] = own
    result.figures["lean_sqlite_loop_us_per_open"] = lean_cost
    return (
        f"; at {number(ours.rate)} opens/s their event loops spent {own:.3g} and "
        f"{lean_cost:.3g} µs of CPU an open"
    )


def _loop_us_per_open(trial: OrderTrial) -> float:
    """The server's event loop CPU per acked open, µs (``nan``: none acked or not read)."""
    return trial.server_loop_cpu / trial.delivered * 1e6 if trial.delivered else math.nan


def report(measured: OrdersRun, options: OrdersOptions) -> ScenarioResult:
    result = ScenarioResult(
        key="orders",
        title="6. Order entry: position.open over websocket, acks after commit",
        how=(
            f"{options.connections:,} websocket connections in another process, each "
            f"authenticated as its own account, send position.open ({options.instruments} "
            "instruments, a new id each) open-loop at the offered rate, round-robin; ack "
            "latency = ack arrival - request written. marketcast = the single process as "
            "`marketcast run` wires it (storage flusher with 5 ms group commits, position "
            "book, profit engine, token auth), SQLite file or PostgreSQL schema. edge -> "
            "positions shard = the same clients against an edge (`run --role edge`) routing "
            "each open over NATS to one positions shard (`run --role positions`, same "
            "storage), acked after the shard's commit. Lean Python server on SQLite = a "
            "reference: the same clients against the least a Python server does per open "
            "(token auth, the open's checks, the bare SQLite group commit below, the same "
            "ack). Floors in "
            "the same run: the same clients and frames against a bare websockets server "
            "answering an ack-shaped frame (no storage), and the same rows written bare in "
            f"{options.window_ms:g} ms group commits (SQLite executemany / PostgreSQL COPY, "
            "latency = row added -> commit done). Every contender climbs the same ramp, "
            f"every step {options.repeats} times interleaved, {options.warmup:g} s warm-up "
            f"+ {options.seconds:g} s measured each, judged by the median of its trials: "
            f"sustained = >= {SUSTAINED_SHARE:.0%} of the rate offered and of what was sent "
            f"acked, p99 ack <= {ACK_P99_MS:g} ms, nothing refused. Latencies in ms as p50 / "
            "p99 / p99.9 (medians over the trials); in the server = marketcast's own "
            "position_op stage over the same window, an op submitted -> its ack queued "
            "(p50 / p99; an edge's spans the bus and the shard); in the shard = the positions "
            "shard's own position_op stage, an op in from the bus -> its answer published. "
            "CPU = share of one core of "
            "the server's process (an edge's), of the positions shard's (PostgreSQL's own "
            "processes are not counted) and of the clients'; loop = the share of the "
            "server's (the shard's) event loop thread alone, beside its storage threads: a "
            "server is CPU-bound when its loop is."
        ),
        notes=list(measured.notes),
    )
    rows: list[tuple[str, ...]] = []
    refusals: dict[Contender, Counter[str]] = {}
    for contender, ladder in measured.steps.items():
        for step in ladder:
            for trial in step.trials:
                refusals.setdefault(contender, Counter()).update(trial.errors)
            rows.append(
                (
                    str(contender),
                    number(step.rate),
                    number(step.offered),
                    number(step.delivered),
                    value_range(step.spread(lambda trial: trial.delivered)),
                    latencies(step, _latency),
                    _own_time(step),
                    _own_time(step, shard=True),
                    p99_range(step),
                    number(step.failures),
                    _cpu_cell(
                        step.median_of(lambda trial: trial.server_cpu),
                        step.median_of(lambda trial: trial.server_loop_cpu),
                    ),
                    _cpu_cell(
                        step.median_of(lambda trial: trial.shard_cpu),
                        step.median_of(lambda trial: trial.shard_loop_cpu),
                    ),
                    _share(step.median_of(lambda trial: trial.client_cpu)),
                    f"{'yes' if step.sustained(CRITERIA) else 'no'} "
                    f"({step.trials_sustained(CRITERIA)} of {len(step.trials)})",
                )
            )
    result.tables.append(
        Table(
            "every step (medians over the trials)",
            (
                "contender",
                "rate",
                "offered/s",
                "acks/s",
                "acks/s range",
                "ack ms",
                "in the server ms",
                "in the shard ms",
                "p99 range ms",
                "refused",
                "server CPU",
                "shard CPU",
                "client CPU",
                "sustained (trials alone)",
            ),
            rows,
        )
    )
    steps = measured.steps
    websocket_steps = steps.get(Contender.WEBSOCKET_FLOOR, [])
    websocket_best = highest_sustained(websocket_steps, CRITERIA)
    headline: list[tuple[str, ...]] = []
    for backend, contenders in BACKENDS.items():
        marketcast, edge, storage = contenders.marketcast, contenders.edge, contenders.floor
        if marketcast not in steps:
            continue
        best = highest_sustained(steps[marketcast], CRITERIA)
        edge_best = highest_sustained(steps.get(edge, []), CRITERIA)
        storage_best = highest_sustained(steps.get(storage, []), CRITERIA)
        ours = best.rate if best else 0.0
        through_edge = edge_best.rate if edge_best else 0.0
        floors = [step.rate if step else 0.0 for step in (websocket_best, storage_best)]
        binding = min(floors)
        headline.append(
            (
                backend,
                _sustained_text(steps[marketcast], options),
                latencies(best, _latency) if best else "-",
                _sustained_text(steps[edge], options) if edge in steps else "-",
                latencies(edge_best, _latency) if edge_best else "-",
                _sustained_text(websocket_steps, options),
                _sustained_text(steps.get(storage, []), options),
                ratio(ours, binding) if binding else "-",
                ratio(through_edge, binding) if binding and edge in steps else "-",
                f">= {number(ACKS_TARGET[backend])}/s, p99 <= {ACK_P99_MS:g} ms; "
                f">= {FLOOR_SHARE_TARGET:.0%} of floor (single process)",
            )
        )
        result.figures[f"{backend}_sustained_acks_per_s"] = ours
        _ack_figures(result, backend, best)
        if edge in steps:
            result.figures[f"{backend}_edge_shard_sustained_acks_per_s"] = through_edge
            _ack_figures(result, f"{backend}_edge_shard", edge_best)
        result.figures[f"{backend}_storage_floor_rows_per_s"] = floors[1]
        result.targets.append(
            Target(
                f"{backend}: position.open acks/s sustained (p99 ack <= {ACK_P99_MS:g} ms, "
                f"median of {options.repeats})",
                ours,
                ACKS_TARGET[backend],
                "/s",
            )
        )
        if binding:
            result.targets.append(
                Target(
                    f"{backend}: acks/s sustained vs the binding floor (lower of websocket "
                    f"request/reply {number(floors[0])}/s and bare {backend} "
                    f"{number(floors[1])}/s)",
                    100 * ours / binding,
                    100 * FLOOR_SHARE_TARGET,
                    "%",
                )
            )
        else:
            result.notes.append(
                f"{backend}: a floor sustained not even the ramp's first step, so the share "
                "of the floor is not judged (start the ramp lower: --opens)"
            )
    if websocket_steps:
        result.figures["websocket_floor_per_s"] = websocket_best.rate if websocket_best else 0.0
    result.tables.append(
        Table(
            "headline: highest offered opens/s sustained, by the median of repeated steps",
            (
                "backend",
                "single process acks/s",
                "ack ms there",
                "edge -> shard acks/s",
                "ack ms there",
                "websocket floor",
                "storage floor",
                "single process vs the lower floor",
                "edge -> shard vs the lower floor",
                "target",
            ),
            headline,
        )
    )
    _lean_reference(result, steps, options)
    for contender, ladder in measured.steps.items():
        if ladder and not ladder[-1].sustained(CRITERIA):
            result.notes.append(
                f"{contender}: first step not sustained, {number(ladder[-1].rate)}/s: "
                + limit_reason(ladder[-1], stores=contender is not Contender.WEBSOCKET_FLOOR)
            )
    for contender, codes in refusals.items():
        if codes:
            seen = ", ".join(f"{code} x {count:,}" for code, count in codes.most_common())
            result.notes.append(f"{contender}: refusals in measured windows: {seen}")
    result.notes.append(
        "ack "
        + arrival_clock_of(
            trial for ladder in measured.steps.values() for step in ladder for trial in step.trials
        )
    )
    result.notes.append(
        "'>= N': sustained the whole ramp, so only known to be at least its top; the ratio "
        "against such a floor is then an upper bound"
    )
    return result
