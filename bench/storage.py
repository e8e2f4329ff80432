"""Scenario 4, storage: BBO rows/s sustained through the real flusher in 5 ms windows, on
SQLite and PostgreSQL, beside bare ``executemany`` / ``COPY`` of the same batches.

marketcast: ``StorageFlusher(window_ms=5)`` over ``SqliteBackend`` (a temporary file) or
``PostgresBackend`` (a schema of its own, dropped afterwards), on this process's event
loop (uvloop when installed). A generator task adds the offered rows/s every
millisecond, fresh ``BboRow`` values as a feed makes them (``RowMaker``: growing
timestamps and seq, realistic prices); each step runs ``warmup`` seconds, then
measures ``seconds``: rows committed per second, flush (batch write) durations and batch
sizes from the flusher's ``on_flush``, and event-loop lag. A step is sustained when
nothing was dropped and the flusher kept up: its backlog (rows buffered or being
written) grew by less than ``BACKLOG_WINDOWS`` windows' worth over the step, so what it
committed is what was offered up to the batches in flight at either end of the window;
the ramp stops after the first step that is not.

Event-loop lag: every millisecond a probe yields once (``asyncio.sleep(0)``) and records
how long the loop took to come back to it, i.e. how long other callbacks held the loop.
The same probe runs with the generator alone (rows added to a list that is emptied)
for the baseline: lag caused by storage is the difference between the two.

Floors, same run, same batch size (offered rate x window): SQLite ``BEGIN IMMEDIATE`` +
``executemany`` + ``COMMIT`` in a loop on one connection (WAL, ``synchronous=NORMAL``,
as the backend); PostgreSQL one binary ``COPY`` (the backend's encoder) committed alone
per batch on one asyncpg connection (as the backend writes a batch of BBO rows only).
SQLite's prices are formatted once up front, PostgreSQL's amounts are encoded once and
memoized; each batch only gets fresh timestamps and seq. As fast as they go for
``seconds``: about the most the database takes, with no flusher and no event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from hdrh.histogram import HdrHistogram

from bench import pgformats
from bench.pacing import due_each_tick
from bench.report import (
    Progress,
    ScenarioResult,
    Table,
    Target,
    latency_histogram,
    ms,
    number,
    ratio,
)
from book.fixed import format_fixed, parse_fixed
from publish.storage.backend import Batch, PrunableBackend, StorageBackend, written
from publish.storage.flusher import StorageFlusher
from publish.storage.pgcopy import COLUMNS, HEADER, TRAILER, BboCopyEncoder
from publish.storage.retention import HOUR_NS, Retention
from publish.storage.rows import BboRow
from publish.storage.sqlite import SqliteBackend

DEFAULT_PG_DSN = os.environ.get(
    "MARKETCAST_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKLOG_WINDOWS = 2
"""A sustained step's backlog grows by less than this many windows of offered rows."""
ROWS_TARGET = 100_000
FLUSH_P99_TARGET_MS = {"sqlite": 10.0, "postgres": 5.0}
LAG_P99_TARGET_MS = 1.0
PROBE_INTERVAL = 0.001


@dataclass(frozen=True, slots=True)
class StorageOptions:
    rates: tuple[int, ...]
    """The ramp: offered BBO rows per second."""
    seconds: float
    warmup: float
    window_ms: float = 5.0
    pg_dsn: str | None = DEFAULT_PG_DSN
    """``None``: SQLite only."""
    pg_formats: bool = True
    """Also compare text/binary COPY into NUMERIC/BIGINT columns (``bench.pgformats``)."""
    pg_formats_seconds: float | None = None
    """Measured seconds of each COPY variant (``None``: ``seconds``)."""
    prune_rows: int = 0
    """When positive: before each step, store this many BBO rows older than the retention,
    and prune them during the step (``Retention`` beside the flusher, as the server runs
    it), so the step's flush times are those with pruning running."""

    @classmethod
    def quick(cls) -> StorageOptions:
        return cls(rates=(100_000,), seconds=1.0, warmup=0.3, pg_formats_seconds=0.5)

    @classmethod
    def full(cls) -> StorageOptions:
        return cls(rates=(100_000, 200_000, 400_000), seconds=4.0, warmup=1.0)


Quote = tuple[int, int, int, int]
"""bid_px, bid_qty, ask_px, ask_qty in fixed point."""

VENUE, SYMBOL = "binance", "BTC-USDT"
RECV_DELAY_NS = 150_000


def sample_quotes(count: int = 4096) -> list[Quote]:
    """Realistic Binance BTC-USDT best bids/asks, cycled by the row makers."""
    tick, bid0 = parse_fixed("0.01"), parse_fixed("61737.63")
    return [
        (
            bid0 + (i % 50) * tick,
            parse_fixed("0.30978") + i * parse_fixed("0.00001"),
            bid0 + (i % 50 + 1) * tick,
            parse_fixed("1.54698"),
        )
        for i in range(count)
    ]


class RowMaker:
    """Fresh BBO rows as a feed makes them: timestamps and ``seq`` grow (so the ``bbo``
    index on (venue, symbol, ts_recv) is appended to, never inserted into at random),
    prices cycle through ``sample_quotes``. One ``BboRow`` per row, like the server's
    ``bbo_row_from_snapshot``."""

    def __init__(self, quotes: list[Quote]) -> None:
        self._quotes = quotes
        self._seq = 0

    def rows(self, count: int) -> list[BboRow]:
        now = time.time_ns()
        quotes, first = self._quotes, self._seq
        self._seq += count
        out = []
        for seq in range(first, first + count):
            bid, bid_qty, ask, ask_qty = quotes[seq % len(quotes)]
            ts = now + seq - first
            out.append(
                BboRow(ts, ts + RECV_DELAY_NS, VENUE, SYMBOL, seq, bid, bid_qty, ask, ask_qty)
            )
        return out


class LagProbe:
    """Records how long the loop takes to come back to a task that yields once."""

    def __init__(self) -> None:
        self.histogram = latency_histogram()
        self.recording = False

    async def run(self) -> None:
        record = self.histogram.record_value
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            started = time.perf_counter_ns()
            await asyncio.sleep(0)
            if self.recording:
                record(max(1, time.perf_counter_ns() - started))


async def offer_rows(add: Callable[[BboRow], None], maker: RowMaker, rate: float) -> None:
    """Add ``rate`` fresh rows per second, every millisecond, until cancelled."""
    async for due in due_each_tick(rate, PROBE_INTERVAL):
        for row in maker.rows(due):
            add(row)


@dataclass(slots=True)
class Step:
    offered: float
    written: float
    """Rows committed per second."""
    dropped: int
    backlog_growth: int
    """Rows buffered or being written at the end of the window minus at its start."""
    window_ms: float
    flush: HdrHistogram
    batch_rows: HdrHistogram
    lag: HdrHistogram
    pruned: float | None = None
    """Old rows pruned per second during the step (``None``: pruning off)."""
    prune_steps: HdrHistogram | None = None
    """How long each pruning step held the writer (and so any flush due meanwhile)."""

    @property
    def sustained(self) -> bool:
        allowed = BACKLOG_WINDOWS * self.offered * self.window_ms / 1000
        return self.dropped == 0 and self.backlog_growth < allowed

    @property
    def us_per_row(self) -> float:
        """Write time per row of a median batch (p50 flush / p50 rows per batch), µs."""
        rows = self.batch_rows.get_value_at_percentile(50)
        return self.flush.get_value_at_percentile(50) / 1e3 / rows if rows else 0.0


@dataclass(slots=True)
class Floor:
    rows_per_second: float
    batch: HdrHistogram
    batch_rows: int


@dataclass(slots=True)
class BackendRun:
    name: str
    baseline_lag: HdrHistogram
    steps: list[Step] = field(default_factory=list)
    floor: Floor | None = None

    @property
    def best(self) -> Step | None:
        sustained = [step for step in self.steps if step.sustained]
        return sustained[-1] if sustained else None


async def _window(seconds: float, warmup: float, probe: LagProbe) -> float:
    await asyncio.sleep(warmup)
    probe.histogram.reset()
    probe.recording = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    probe.recording = False
    return time.perf_counter() - started


async def baseline_lag(options: StorageOptions, maker: RowMaker) -> HdrHistogram:
    """The probe's lag with the generator alone (rows go to a list that is emptied)."""
    sink: list[BboRow] = []

    def add(row: BboRow) -> None:
        sink.append(row)
        if len(sink) > 10_000:
            sink.clear()

    probe = LagProbe()
    async with asyncio.TaskGroup() as tasks:
        probe_task = tasks.create_task(probe.run())
        generator = tasks.create_task(offer_rows(add, maker, options.rates[0]))
        await _window(options.seconds, options.warmup, probe)
        probe_task.cancel()
        generator.cancel()
    return probe.histogram


async def flusher_step(
    backend: StorageBackend, rate: float, options: StorageOptions, maker: RowMaker
) -> Step:
    flush = latency_histogram()
    batch_rows = HdrHistogram(1, 10_000_000, 3)
    measuring = False

    def on_flush(duration_ns: int, count: int) -> None:
        if measuring:
            flush.record_value(max(1, duration_ns))
            batch_rows.record_value(max(1, count))

    flusher = StorageFlusher(backend, window_ms=options.window_ms, on_flush=on_flush)
    retention = None
    prune_steps = None
    if options.prune_rows > 0:
        await store_old_rows(backend, maker, options.prune_rows)
        assert isinstance(backend, PrunableBackend), f"{backend.name} cannot prune"
        step_times = prune_steps = latency_histogram()

        def on_step(duration_ns: int, rows: int) -> None:
            if measuring:
                step_times.record_value(max(1, duration_ns))

        retention = Retention(flusher, backend, retain_hours=RETAIN_HOURS, on_step=on_step)
    probe = LagProbe()
    async with asyncio.TaskGroup() as tasks:
        flushing = tasks.create_task(flusher.run())
        probe_task = tasks.create_task(probe.run())
        generator = tasks.create_task(offer_rows(flusher.add_bbo, maker, rate))
        pruning = tasks.create_task(retention.run()) if retention is not None else None
        await asyncio.sleep(options.warmup)
        before = flusher.stats()
        pruned_before = retention.deleted if retention is not None else 0
        measuring = True
        seconds = await _window(options.seconds, 0.0, probe)
        measuring = False
        after = flusher.stats()
        pruned = retention.deleted - pruned_before if retention is not None else None
        generator.cancel()
        probe_task.cancel()
        flushing.cancel()
        if pruning is not None:
            pruning.cancel()
    await flusher.drain()
    return Step(
        offered=rate,
        written=(after.rows_written - before.rows_written) / seconds,
        dropped=after.dropped_bbo_rows - before.dropped_bbo_rows,
        backlog_growth=after.pending_rows - before.pending_rows,
        window_ms=options.window_ms,
        flush=flush,
        batch_rows=batch_rows,
        lag=probe.histogram,
        pruned=None if pruned is None else pruned / seconds,
        prune_steps=prune_steps,
    )


RETAIN_HOURS = 1.0
"""The retention of ``--prune-rows`` steps; the old rows are twice as old."""


async def store_old_rows(backend: StorageBackend, maker: RowMaker, count: int) -> None:
    """``count`` BBO rows received ``2 * RETAIN_HOURS`` ago, for a step to prune."""
    shift = 2 * int(RETAIN_HOURS * HOUR_NS)
    for start in range(0, count, 10_000):
        rows = maker.rows(min(10_000, count - start))
        old = [
            replace(row, ts_event=row.ts_event - shift, ts_recv=row.ts_recv - shift) for row in rows
        ]
        await written(backend, Batch(bbo=old))


def _quote_texts(quotes: list[Quote]) -> list[tuple[str, str, str, str]]:
    return [
        (format_fixed(bid), format_fixed(bid_qty), format_fixed(ask), format_fixed(ask_qty))
        for bid, bid_qty, ask, ask_qty in quotes
    ]


def sqlite_floor(path: Path, quotes: list[Quote], batch_rows: int, seconds: float) -> Floor:
    """Bare ``executemany``, one transaction per batch; prices pre-formatted, fresh
    timestamps and ``seq`` per batch."""
    texts = _quote_texts(quotes)
    conn = sqlite3.connect(path, isolation_level=None)
    durations = latency_histogram()
    written = 0
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        insert = (
            "INSERT INTO bbo (ts_event, ts_recv, venue, symbol, seq, bid_px, bid_qty, ask_px,"
            " ask_qty) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        started = time.perf_counter()
        while (now := time.perf_counter()) - started < seconds:
            ts = time.time_ns() - written
            params = [
                (ts + seq, ts + seq + RECV_DELAY_NS, VENUE, SYMBOL, seq, *texts[seq % len(texts)])
                for seq in range(written, written + batch_rows)
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, params)
            conn.execute("COMMIT")
            durations.record_value(max(1, int((time.perf_counter() - now) * 1e9)))
            written += batch_rows
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return Floor(written / elapsed, durations, batch_rows)


async def postgres_floor(
    dsn: str, schema: str, quotes: list[Quote], batch_rows: int, seconds: float
) -> Floor:
    """Bare binary ``COPY`` (the backend's format and encoder, ``publish.storage.pgcopy``),
    one statement committed alone per batch; fresh timestamps and ``seq`` per batch, made
    before the batch's clock starts."""
    import asyncpg

    maker, encoder = RowMaker(quotes), BboCopyEncoder()
    conn = await asyncpg.connect(dsn)
    durations = latency_histogram()
    written = 0
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            rows = maker.rows(batch_rows)
            now = time.perf_counter()
            data = HEADER + encoder.rows(rows) + TRAILER

            async def source(data: bytes = data) -> AsyncIterator[bytes]:
                yield data

            await conn.copy_to_table(
                "bbo", schema_name=schema, columns=COLUMNS, source=source(), format="binary"
            )
            durations.record_value(max(1, int((time.perf_counter() - now) * 1e9)))
            written += batch_rows
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return Floor(written / elapsed, durations, batch_rows)


async def measure_backend(
    name: str,
    make_backend: Callable[[], StorageBackend],
    floor: Callable[[list[Quote], int], Awaitable[Floor]],
    options: StorageOptions,
    quotes: list[Quote],
    progress: Progress,
) -> BackendRun:
    progress.step(f"{name}: event-loop lag with the row generator alone")
    run = BackendRun(name, await baseline_lag(options, RowMaker(quotes)))
    backend = make_backend()
    await backend.open()
    try:
        for rate in options.rates:
            progress.step(f"{name}: flusher at {number(rate)} rows/s offered")
            step = await flusher_step(backend, rate, options, RowMaker(quotes))
            run.steps.append(step)
            if not step.sustained:
                break
    finally:
        await backend.close()
    batch_size = max(1, int(options.rates[0] * options.window_ms / 1000))
    progress.step(f"{name}: bare floor, batches of {batch_size} rows")
    run.floor = await floor(quotes, batch_size)
    return run


async def measure_all(
    options: StorageOptions, progress: Progress
) -> tuple[list[BackendRun], list[str]]:
    quotes = sample_quotes()
    runs: list[BackendRun] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="marketcast-bench-") as directory:
        path = Path(directory) / "bench.db"

        async def sqlite_bare(quotes: list[Quote], batch_rows: int) -> Floor:
            return await asyncio.to_thread(sqlite_floor, path, quotes, batch_rows, options.seconds)

        runs.append(
            await measure_backend(
                "sqlite", lambda: SqliteBackend(path), sqlite_bare, options, quotes, progress
            )
        )
    if options.pg_dsn is None:
        notes.append("PostgreSQL skipped (--no-postgres)")
        return runs, notes
    try:
        from publish.storage.postgres import PostgresBackend
    except ImportError:
        notes.append("PostgreSQL skipped: asyncpg is not installed (pip install '.[postgres]')")
        return runs, notes
    dsn = options.pg_dsn
    schema = f"marketcast_bench_{os.getpid()}"
    try:
        runs.append(
            await measure_backend(
                "postgres",
                lambda: PostgresBackend(dsn, schema=schema),
                lambda quotes, batch_rows: postgres_floor(
                    dsn, schema, quotes, batch_rows, options.seconds
                ),
                options,
                quotes,
                progress,
            )
        )
    except OSError as exc:
        notes.append(f"PostgreSQL skipped: cannot reach {dsn}: {str(exc)[:200]}")
    finally:
        with contextlib.suppress(OSError):
            await _drop_schema(dsn, schema)
    return runs, notes


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def measure_formats(
    options: StorageOptions, progress: Progress, notes: list[str]
) -> list[pgformats.VariantRun]:
    """The PostgreSQL COPY format / amount column comparison at the first offered rate
    (``bench.pgformats``); nothing when PostgreSQL is skipped or unreachable."""
    if options.pg_dsn is None or not options.pg_formats:
        return []
    progress.step(f"postgres: {len(pgformats.VARIANTS)} COPY variants, interleaved")
    try:
        return await pgformats.measure(
            options.pg_dsn,
            RowMaker(sample_quotes()).rows,
            rate=options.rates[0],
            window_ms=options.window_ms,
            seconds=options.pg_formats_seconds or options.seconds,
            warmup=options.warmup,
        )
    except (OSError, ImportError) as exc:
        notes.append(f"PostgreSQL COPY variants skipped: {str(exc)[:200]}")
        return []


def _summary(histogram: HdrHistogram) -> str:
    """p50 / p99 / max in ms."""
    if not histogram.get_total_count():
        return "none in the window"
    return " / ".join(ms(histogram.get_value_at_percentile(p)) for p in (50, 99)) + (
        f" / {ms(histogram.get_max_value())}"
    )


def run(options: StorageOptions, progress: Progress) -> ScenarioResult:
    from app.loop import loop_factory

    progress.scenario("storage")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runs, notes = runner.run(measure_all(options, progress))
        reached = any(backend.name == "postgres" for backend in runs)
        formats = runner.run(measure_formats(options, progress, notes)) if reached else []
    progress.done()
    result = ScenarioResult(
        key="storage",
        title="4. Storage: BBO rows through the flusher in 5 ms windows",
        how=(
            f"StorageFlusher(window_ms={options.window_ms:g}) on SQLite (temporary file, WAL, "
            "synchronous=NORMAL, writer thread) and PostgreSQL (asyncpg, binary COPY, own schema), "
            "rows added every millisecond on this process's event loop; "
            f"{options.warmup:g} s warm-up + {options.seconds:g} s measured per step. "
            "Flush = one batch's write (ms, p50 / p99 / max). Loop lag = how long a task "
            "that yields once waits to run again (ms, p50 / p99 / max), with storage and "
            "with the row generator alone (baseline). Floors in the same run: bare "
            "executemany (SQLite, prices formatted once) / binary COPY (PostgreSQL, the "
            "backend's encoder) of batches of the window's size, fresh timestamps, one "
            "transaction each, as fast as they go; "
            "µs per row = p50 batch time / rows in it, at the first step for marketcast. "
            "COPY variants (PostgreSQL): the same rows at the first offered rate in batches "
            "of the window, bare on one connection (synchronous_commit=off, as the backend's "
            "BBO batches), text or binary COPY into NUMERIC (binary: the backend's encoder "
            "from the fixed-point int, or asyncpg's from Decimal) or fixed-point BIGINT columns, "
            "interleaved in 0.5 s slices; build = rows -> COPY payload on the loop, write = "
            "the COPY committed alone, flush = both (ms, p50 / p99 / max)."
        ),
        notes=notes,
    )
    if options.prune_rows > 0:
        result.how += (
            f" Pruning on: before each step {options.prune_rows:,} BBO rows older than the "
            f"retention ({RETAIN_HOURS:g} h) are stored, and Retention deletes them during the "
            "step, as the server does: a step starts only with no write in flight (on "
            "SQLite, whose writer thread it holds, also only with the next flush due 1 ms "
            "later or more; PostgreSQL runs it beside the writes on a connection of its "
            "own), and its size adapts to keep it near half its budget (1 ms on SQLite, "
            "half a window on PostgreSQL). "
            "Flush times are those with pruning running. Prune step = how long one step "
            "took (ms, p50 / p99 / max)."
        )
    rows: list[tuple[str, ...]] = []
    floors: list[tuple[str, ...]] = []
    for backend in runs:
        for step in backend.steps:
            rows.append(
                (
                    backend.name,
                    number(step.offered),
                    number(step.written),
                    f"{step.backlog_growth:+,}",
                    str(step.dropped),
                    _summary(step.flush),
                    number(step.batch_rows.get_value_at_percentile(50)),
                    _summary(step.lag),
                    _summary(backend.baseline_lag),
                    "yes" if step.sustained else "no",
                    "-" if step.pruned is None else number(step.pruned),
                    "-" if step.prune_steps is None else _summary(step.prune_steps),
                )
            )
        best = backend.best
        floor = backend.floor
        first = backend.steps[0] if backend.steps else None
        if floor is not None:
            floor_us = floor.batch.get_value_at_percentile(50) / 1e3 / floor.batch_rows
            ours_us = first.us_per_row if first is not None else 0.0
            floors.append(
                (
                    backend.name,
                    f"{floor.batch_rows:,}",
                    number(floor.rows_per_second),
                    _summary(floor.batch),
                    f"{floor_us:.2f}",
                    f"{ours_us:.2f}" if ours_us else "-",
                    ratio(floor_us, ours_us) if ours_us else "-",
                    number(best.written) if best else "none",
                )
            )
            result.figures[f"{backend.name}_floor_rows_per_s"] = floor.rows_per_second
        if first is not None:
            result.figures[f"{backend.name}_rows_per_s_at_{int(first.offered)}"] = first.written
            flush_p99 = first.flush.get_value_at_percentile(99) / 1e6
            lag_p99 = first.lag.get_value_at_percentile(99) / 1e6
            result.figures[f"{backend.name}_flush_p99_ms"] = flush_p99
            result.figures[f"{backend.name}_lag_p99_ms"] = lag_p99
            if first.pruned is not None:
                result.figures[f"{backend.name}_pruned_rows_per_s"] = first.pruned
            if first.prune_steps is not None:
                result.figures[f"{backend.name}_prune_step_p99_ms"] = (
                    first.prune_steps.get_value_at_percentile(99) / 1e6
                )
            result.targets += [
                Target(
                    f"{backend.name}: rows/s sustained (committed {number(first.written)}/s)",
                    first.offered if first.sustained else first.written,
                    ROWS_TARGET,
                    "/s",
                ),
                Target(
                    f"{backend.name}: flush p99 at {number(first.offered)} rows/s",
                    flush_p99,
                    FLUSH_P99_TARGET_MS[backend.name],
                    " ms",
                    higher_is_better=False,
                ),
                Target(
                    f"{backend.name}: event-loop lag p99 at {number(first.offered)} rows/s",
                    lag_p99,
                    LAG_P99_TARGET_MS,
                    " ms",
                    higher_is_better=False,
                ),
            ]
    result.tables.append(
        Table(
            "marketcast flusher, every step",
            (
                "backend",
                "offered rows/s",
                "committed rows/s",
                "backlog growth (rows)",
                "dropped",
                "flush ms",
                "rows per batch p50",
                "loop lag ms",
                "baseline lag ms",
                "sustained",
                "pruned rows/s",
                "prune step ms",
            ),
            rows,
        )
    )
    result.tables.append(
        Table(
            "against the bare floor",
            (
                "backend",
                "bare batch rows",
                "bare rows/s (max)",
                "bare batch ms",
                "bare µs per row",
                "marketcast µs per row",
                "marketcast speed vs bare",
                "marketcast max sustained rows/s",
            ),
            floors,
        )
    )
    if formats:
        result.tables.append(pgformats.table(formats, options.rates[0], options.window_ms))
        for variant in formats:
            key = f"postgres_{variant.variant.key}"
            result.figures[f"{key}_flush_p99_ms"] = variant.flush.get_value_at_percentile(99) / 1e6
    return result
