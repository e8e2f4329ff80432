"""PostgreSQL flush tail: the same BBO rows written five ways, side by side, in one run.

The storage backend copies BBO rows as binary ``COPY`` into ``NUMERIC`` columns, each
amount encoded straight from the book's fixed-point int (``publish.storage.pgcopy``).
Beside it: the text ``COPY`` it used before, asyncpg's own binary encoder, and
fixed-point ``BIGINT`` columns (the int the book already holds, scaled by 10^12: no
decimal to encode, send or parse), with text or binary ``COPY``:

- **binary / NUMERIC from the fixed-point int** (what the backend does): the backend's
  own encoder (``BboCopyEncoder``), one ``COPY`` stream of bytes;
- **text / NUMERIC**: one line per row, amounts as their shortest exact decimal
  (``format_fixed``), as the backend wrote them before;
- **binary / NUMERIC from Decimal (asyncpg)**: records with one ``Decimal`` per amount
  (``to_decimal``), which asyncpg's binary encoder requires;
- **text / BIGINT**: one line per row, amounts as the fixed-point ints;
- **binary / BIGINT**: records of plain ints.

Every ``window_ms`` (5 ms) a batch of ``rate x window`` fresh ``BboRow``s (``RowMaker``,
as a feed makes them) is turned into the variant's payload on the event loop (**build**)
and written as one ``COPY`` that commits alone with ``synchronous_commit=off``, as the
backend writes BBO batches (**write**: the ``COPY`` and its commit, one round trip);
**flush** = build + write, what the flusher's batch time holds. A batch that finishes
late makes the next one start at once (no batch is skipped); the variant kept up when
its last batch ended within two windows of its due time. Each variant writes its own
table (same columns and index as the backend's ``bbo``) in the bench's schema. The
variants run interleaved in slices of ``SLICE_SECONDS`` so that whatever else the
machine does hits all five alike.

A fixed-point ``BIGINT`` at scale 10^12 holds amounts below 9,223,372.036854775807: enough
for prices, too little for the quantities of low-priced coins (a size of 10 million);
a real schema change would need a smaller scale per column or ``NUMERIC`` for sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from bench.report import Table, latency_histogram, ms
from book.fixed import format_fixed, to_decimal
from publish.storage.pgcopy import COLUMNS, HEADER, TRAILER, BboCopyEncoder
from publish.storage.rows import BboRow

SLICE_SECONDS = 0.5
"""Each variant runs this long before the next one takes over (interleaving)."""
BEHIND_WINDOWS = 2
"""A variant kept up when its last batch ended within this many windows of its due time."""
_NULL = "\\N"


@dataclass(frozen=True, slots=True)
class Variant:
    copy_format: str
    """``text`` or ``binary``."""
    amounts: str
    """Column type of prices and quantities: ``NUMERIC`` or ``BIGINT`` (fixed point)."""
    encoder: str = ""
    """For binary ``NUMERIC``: ``fixed`` (the backend's, from the int) or ``decimal``
    (asyncpg's, from a ``Decimal``)."""

    @property
    def name(self) -> str:
        how = {"fixed": " from the fixed-point int", "decimal": " from Decimal (asyncpg)"}
        return f"{self.copy_format} COPY, {self.amounts}{how.get(self.encoder, '')}"

    @property
    def key(self) -> str:
        suffix = f"_{self.encoder}" if self.encoder else ""
        return f"{self.copy_format}_{self.amounts.lower()}{suffix}"

    @property
    def table(self) -> str:
        return f"bbo_{self.key}"


VARIANTS = (
    Variant("binary", "NUMERIC", "fixed"),
    Variant("text", "NUMERIC"),
    Variant("binary", "NUMERIC", "decimal"),
    Variant("text", "BIGINT"),
    Variant("binary", "BIGINT"),
)
BACKEND_VARIANT = VARIANTS[0]
"""What ``publish.storage.postgres.PostgresBackend`` does today."""


@dataclass(slots=True)
class VariantRun:
    variant: Variant
    batch_rows: int
    build: HdrHistogram = field(default_factory=latency_histogram)
    write: HdrHistogram = field(default_factory=latency_histogram)
    flush: HdrHistogram = field(default_factory=latency_histogram)
    rows: int = 0
    seconds: float = 0.0
    behind_ns: int = 0
    """How late the last batch of the last slice ended, past its due time."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def kept_up(self, window_ms: float) -> bool:
        return self.behind_ns < BEHIND_WINDOWS * window_ms * 1e6


Payload = Any
"""A whole ``COPY`` stream (bytes, text or binary) or a list of binary ``COPY`` records
for asyncpg's encoder."""


@functools.lru_cache(maxsize=4096)
def escaped(text: str) -> str:
    """``text`` as a text ``COPY`` field (venue and symbol names: a handful, cached)."""
    for raw, escape in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(raw, escape)
    return text


def text_numeric(rows: Sequence[BboRow]) -> bytes:
    text = format_fixed
    return "".join(
        f"{r.ts_event}\t{r.ts_recv}\t{escaped(r.venue)}\t{escaped(r.symbol)}\t{r.seq}"
        f"\t{_NULL if r.bid_px is None else text(r.bid_px)}"
        f"\t{_NULL if r.bid_qty is None else text(r.bid_qty)}"
        f"\t{_NULL if r.ask_px is None else text(r.ask_px)}"
        f"\t{_NULL if r.ask_qty is None else text(r.ask_qty)}\n"
        for r in rows
    ).encode()


def text_bigint(rows: Sequence[BboRow]) -> bytes:
    return "".join(
        f"{r.ts_event}\t{r.ts_recv}\t{escaped(r.venue)}\t{escaped(r.symbol)}\t{r.seq}"
        f"\t{_NULL if r.bid_px is None else r.bid_px}"
        f"\t{_NULL if r.bid_qty is None else r.bid_qty}"
        f"\t{_NULL if r.ask_px is None else r.ask_px}"
        f"\t{_NULL if r.ask_qty is None else r.ask_qty}\n"
        for r in rows
    ).encode()


def binary_numeric(rows: Sequence[BboRow]) -> list[tuple[object, ...]]:
    def amount(value: int | None) -> object:
        return None if value is None else to_decimal(value)

    return [
        (
            r.ts_event,
            r.ts_recv,
            r.venue,
            r.symbol,
            r.seq,
            amount(r.bid_px),
            amount(r.bid_qty),
            amount(r.ask_px),
            amount(r.ask_qty),
        )
        for r in rows
    ]


def binary_bigint(rows: Sequence[BboRow]) -> list[tuple[object, ...]]:
    return [
        (r.ts_event, r.ts_recv, r.venue, r.symbol, r.seq, r.bid_px, r.bid_qty, r.ask_px, r.ask_qty)
        for r in rows
    ]


def binary_numeric_fixed(rows: Sequence[BboRow]) -> bytes:
    return HEADER + _ENCODER.rows(rows) + TRAILER


_ENCODER = BboCopyEncoder()
"""One for the run, as the backend keeps one (its memos carry over between batches)."""

BUILDERS: dict[Variant, Callable[[Sequence[BboRow]], Payload]] = {
    Variant("binary", "NUMERIC", "fixed"): binary_numeric_fixed,
    Variant("text", "NUMERIC"): text_numeric,
    Variant("binary", "NUMERIC", "decimal"): binary_numeric,
    Variant("text", "BIGINT"): text_bigint,
    Variant("binary", "BIGINT"): binary_bigint,
}


def create_table(schema: str, variant: Variant) -> list[str]:
    """The backend's ``bbo`` table and index with the variant's amount columns."""
    amount = variant.amounts
    s = f'"{schema}"'
    return [
        f"CREATE TABLE IF NOT EXISTS {s}.{variant.table} (ts_event BIGINT NOT NULL,"
        " ts_recv BIGINT NOT NULL, venue TEXT NOT NULL, symbol TEXT NOT NULL,"
        f" seq BIGINT NOT NULL, bid_px {amount}, bid_qty {amount}, ask_px {amount},"
        f" ask_qty {amount})",
        f"CREATE INDEX IF NOT EXISTS {variant.table}_venue_symbol_ts"
        f" ON {s}.{variant.table} (venue, symbol, ts_recv)",
    ]


async def write(conn: Any, schema: str, variant: Variant, payload: Payload) -> None:
    """The payload's ``COPY``, committed alone (one statement, no ``BEGIN``/``COMMIT``)."""
    if isinstance(payload, bytes):

        async def source() -> Any:
            yield payload

        await conn.copy_to_table(
            variant.table,
            schema_name=schema,
            columns=COLUMNS,
            source=source(),
            format=variant.copy_format,
        )
    else:
        await conn.copy_records_to_table(
            variant.table, schema_name=schema, columns=COLUMNS, records=payload
        )


async def paced_slice(
    conn: Any,
    schema: str,
    run: VariantRun,
    rows: Callable[[int], list[BboRow]],
    *,
    window_ms: float,
    seconds: float,
    record: bool,
) -> None:
    """Batches of ``run.batch_rows`` every ``window_ms`` for ``seconds``, recorded into
    ``run`` when ``record``."""
    loop = asyncio.get_running_loop()
    build = BUILDERS[run.variant]
    window = window_ms / 1000
    started = loop.time()
    due = started
    batches = 0
    while due - started < seconds:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        batch = rows(run.batch_rows)
        t0 = time.perf_counter_ns()
        payload = build(batch)
        t1 = time.perf_counter_ns()
        await write(conn, schema, run.variant, payload)
        t2 = time.perf_counter_ns()
        batches += 1
        if record:
            run.build.record_value(max(1, t1 - t0))
            run.write.record_value(max(1, t2 - t1))
            run.flush.record_value(max(1, t2 - t0))
        due += window
    if record:
        run.rows += batches * run.batch_rows
        run.seconds += loop.time() - started
        run.behind_ns = max(0, int((loop.time() - due) * 1e9))


async def measure_variants(
    connect: Callable[[], Awaitable[Any]],
    schema: str,
    rows: Callable[[int], list[BboRow]],
    *,
    rate: float,
    window_ms: float,
    seconds: float,
    warmup: float,
) -> list[VariantRun]:
    """Every variant at ``rate`` rows/s, interleaved in slices, ``warmup`` then
    ``seconds`` each (measured)."""
    batch_rows = max(1, int(rate * window_ms / 1000))
    runs = [VariantRun(variant, batch_rows) for variant in VARIANTS]
    conn = await connect()
    try:
        await conn.execute("SET synchronous_commit TO off")
        for variant in VARIANTS:
            for statement in create_table(schema, variant):
                await conn.execute(statement)
        for run in runs:
            await paced_slice(
                conn, schema, run, rows, window_ms=window_ms, seconds=warmup, record=False
            )
        slices = max(1, round(seconds / SLICE_SECONDS))
        for _ in range(slices):
            for run in runs:
                await paced_slice(
                    conn,
                    schema,
                    run,
                    rows,
                    window_ms=window_ms,
                    seconds=seconds / slices,
                    record=True,
                )
    finally:
        await conn.close()
    return runs


async def measure(
    dsn: str,
    rows: Callable[[int], list[BboRow]],
    *,
    rate: float,
    window_ms: float,
    seconds: float,
    warmup: float,
) -> list[VariantRun]:
    """``measure_variants`` in a schema of its own on ``dsn``, dropped afterwards."""
    import asyncpg

    schema = f"marketcast_bench_formats_{os.getpid()}"

    async def connect() -> Any:
        return await asyncpg.connect(dsn)

    try:
        conn = await connect()
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        finally:
            await conn.close()
        return await measure_variants(
            connect, schema, rows, rate=rate, window_ms=window_ms, seconds=seconds, warmup=warmup
        )
    finally:
        with contextlib.suppress(OSError):
            conn = await connect()
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


def _summary(histogram: HdrHistogram) -> str:
    if not histogram.get_total_count():
        return "-"
    return " / ".join(ms(histogram.get_value_at_percentile(p)) for p in (50, 99)) + (
        f" / {ms(histogram.get_max_value())}"
    )


def table(runs: list[VariantRun], rate: float, window_ms: float) -> Table:
    backend = next((run for run in runs if run.variant == BACKEND_VARIANT), None)
    base = backend.flush.get_value_at_percentile(99) if backend else 0
    rows = []
    for run in runs:
        p99 = run.flush.get_value_at_percentile(99)
        rows.append(
            (
                run.variant.name + (" (backend today)" if run.variant == BACKEND_VARIANT else ""),
                f"{run.batch_rows:,}",
                f"{run.rows_per_second:,.0f}",
                _summary(run.build),
                _summary(run.write),
                _summary(run.flush),
                f"{p99 / base:.0%}" if base and run.flush.get_total_count() else "-",
                "yes" if run.kept_up(window_ms) else "no",
            )
        )
    return Table(
        f"PostgreSQL flush tail at {rate:,.0f} rows/s: COPY format x amount columns "
        "(bare, interleaved)",
        (
            "variant",
            "rows per batch",
            "rows/s written",
            "build ms",
            "write ms",
            "flush ms",
            "flush p99 vs backend's",
            "kept up",
        ),
        rows,
    )
