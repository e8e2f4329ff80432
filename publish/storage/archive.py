"""``marketcast archive``: old BBO rows and closed positions moved to Parquet files.

Files are partitioned Hive-style by UTC day and venue, so DuckDB, pandas, Polars, Spark
or ClickHouse read a whole archive directly (``read_parquet('DIR/bbo/**/*.parquet',
hive_partitioning=true)``, ``pandas.read_parquet('DIR/bbo')``)::

    DIR/bbo/date=2026-12-03/venue=binance/BTC-USDT_<first ts_recv>.parquet
    DIR/positions/date=2026-12-03/venue=binance/<first closed_ts>_<digest>.parquet

BBO files hold ``ts_event, ts_recv, symbol, seq, bid_px, bid_qty, ask_px, ask_qty``
(times int64 ns, amounts exact ``decimal128(30, 12)``, as stored), one instrument per file,
in ``ts_recv`` order; position files ``id, account, instrument, side, qty, entry_px,
opened_ts, closed_ts`` (of the day they were closed, by the venue of their instrument).
``date`` and ``venue`` are in the path only.

Crash-safe, one file at a time: the rows are written to a hidden temporary file beside
the final one, fsynced, renamed into place, the directory fsynced, and only then deleted
from the database (one transaction). A killed archive therefore loses nothing: rows are
deleted only once their file is durable. It can be run again, with no duplicates: a
file's name is derived from its first row and files are cut at the same rows, so rows
written but not yet deleted come out again under the same name and replace that file.

The transaction that deletes positions keeps their ``(account, id)`` in
``archived_positions``: an archived position's id stays taken, as a closed one's does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from book.fixed import SCALE_DIGITS, to_decimal
from book.instruments import venue_of
from publish.storage.backend import ArchivableBackend
from publish.storage.rows import BboRow, PositionRow

ROWS_PER_FILE = 100_000
"""Rows per Parquet file at most (plus rows sharing the last one's ``ts_recv``)."""
AMOUNT_PRECISION = 30
"""Digits of a stored amount: below 10^18 with 12 decimals."""
DAY_NS = 86_400 * 10**9

OnFile = Callable[[Path], Awaitable[None]]
"""Called with each file once it is durable, before its rows are deleted (tests)."""


@dataclass(frozen=True, slots=True)
class ArchiveReport:
    bbo_rows: int
    bbo_files: int
    positions: int
    position_files: int


async def archive(
    backend: ArchivableBackend,
    out: Path,
    *,
    before_ns: int,
    rows_per_file: int = ROWS_PER_FILE,
    on_file: OnFile | None = None,
) -> ArchiveReport:
    """Move BBO rows received and positions closed before ``before_ns`` to Parquet files
    under ``out`` (see the module docstring). Needs pyarrow (the ``archive`` extra)."""
    if rows_per_file < 1:
        raise ValueError("rows_per_file must be at least 1")
    import pyarrow  # noqa: F401  (fail before touching anything when it is missing)

    _remove_leftovers(out)
    bbo_rows = bbo_files = 0
    async for chunk in _bbo_files(backend.bbo_before(before_ns), rows_per_file):
        first = chunk[0]
        path = (
            out
            / "bbo"
            / f"date={_day(first.ts_recv)}"
            / f"venue={first.venue}"
            / f"{first.symbol}_{first.ts_recv}.parquet"
        )
        _write_durably(path, _bbo_table(chunk))
        if on_file is not None:
            await on_file(path)
        await backend.delete_bbo(first.venue, first.symbol, first.ts_recv, chunk[-1].ts_recv)
        bbo_rows += len(chunk)
        bbo_files += 1
    positions = position_files = 0
    async for part in _position_files(backend.closed_positions_before(before_ns), rows_per_file):
        opening = part[0]
        assert opening.closed_ts is not None
        digest = hashlib.sha256(f"{opening.account}\0{opening.id}".encode()).hexdigest()[:16]
        path = (
            out
            / "positions"
            / f"date={_day(opening.closed_ts)}"
            / f"venue={venue_of(opening.instrument)}"
            / f"{opening.closed_ts}_{digest}.parquet"
        )
        _write_durably(path, _positions_table(part))
        if on_file is not None:
            await on_file(path)
        await backend.delete_positions([(row.account, row.id) for row in part])
        positions += len(part)
        position_files += 1
    return ArchiveReport(bbo_rows, bbo_files, positions, position_files)


async def _bbo_files(
    pages: AsyncIterator[list[BboRow]], rows_per_file: int
) -> AsyncIterator[list[BboRow]]:
    """The rows (ordered by venue, symbol, ts_recv) cut into files: one instrument and
    day per file, at most ``rows_per_file`` rows but never splitting rows of equal
    ``ts_recv`` (a file's rows are deleted by their ``ts_recv`` range)."""
    chunk: list[BboRow] = []
    async for page in pages:
        for row in page:
            if chunk and _ends_before(chunk, row, rows_per_file):
                yield chunk
                chunk = []
            chunk.append(row)
    if chunk:
        yield chunk


def _ends_before(chunk: list[BboRow], row: BboRow, rows_per_file: int) -> bool:
    last = chunk[-1]
    if (row.venue, row.symbol) != (last.venue, last.symbol):
        return True
    if row.ts_recv // DAY_NS != last.ts_recv // DAY_NS:
        return True
    return len(chunk) >= rows_per_file and row.ts_recv != last.ts_recv


async def _position_files(
    pages: AsyncIterator[list[PositionRow]], rows_per_file: int
) -> AsyncIterator[list[PositionRow]]:
    """Closed positions (ordered by closed_ts, account, id) grouped by day and venue, at
    most ``rows_per_file`` per file. One day's groups are held until the day ends."""
    groups: dict[str, list[PositionRow]] = {}
    day: int | None = None
    async for page in pages:
        for row in page:
            assert row.closed_ts is not None
            if day is not None and row.closed_ts // DAY_NS != day:
                for group in groups.values():
                    if group:
                        yield group
                groups = {}
            day = row.closed_ts // DAY_NS
            group = groups.setdefault(venue_of(row.instrument), [])
            group.append(row)
            if len(group) >= rows_per_file:
                yield group
                groups[venue_of(row.instrument)] = []
    for group in groups.values():
        if group:
            yield group


def _day(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%d")


def _amounts(values: Iterator[int | None]) -> list[Decimal | None]:
    return [None if value is None else to_decimal(value) for value in values]


def _bbo_table(rows: list[BboRow]) -> Any:
    import pyarrow as pa

    amount = pa.decimal128(AMOUNT_PRECISION, SCALE_DIGITS)
    return pa.table(
        {
            "ts_event": pa.array([row.ts_event for row in rows], pa.int64()),
            "ts_recv": pa.array([row.ts_recv for row in rows], pa.int64()),
            "symbol": pa.array([row.symbol for row in rows], pa.string()),
            "seq": pa.array([row.seq for row in rows], pa.int64()),
            "bid_px": pa.array(_amounts(row.bid_px for row in rows), amount),
            "bid_qty": pa.array(_amounts(row.bid_qty for row in rows), amount),
            "ask_px": pa.array(_amounts(row.ask_px for row in rows), amount),
            "ask_qty": pa.array(_amounts(row.ask_qty for row in rows), amount),
        }
    )


def _positions_table(rows: list[PositionRow]) -> Any:
    import pyarrow as pa

    amount = pa.decimal128(AMOUNT_PRECISION, SCALE_DIGITS)
    return pa.table(
        {
            "id": pa.array([row.id for row in rows], pa.string()),
            "account": pa.array([row.account for row in rows], pa.string()),
            "instrument": pa.array([row.instrument for row in rows], pa.string()),
            "side": pa.array([row.side.value for row in rows], pa.string()),
            "qty": pa.array(_amounts(row.qty for row in rows), amount),
            "entry_px": pa.array(_amounts(row.entry_price for row in rows), amount),
            "opened_ts": pa.array([row.opened_ts for row in rows], pa.int64()),
            "closed_ts": pa.array([row.closed_ts for row in rows], pa.int64()),
        }
    )


def _write_durably(path: Path, table: Any) -> None:
    """``table`` at ``path``, all or nothing: a temporary file, fsync, rename, fsync of
    the directory (so the rename survives a power loss too)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    with temporary.open("rb+") as written:
        os.fsync(written.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _remove_leftovers(out: Path) -> None:
    """Temporary files of a killed run (their rows are still in the database)."""
    if out.is_dir():
        for leftover in out.rglob(".*.parquet.tmp"):
            leftover.unlink()
