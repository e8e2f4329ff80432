"""The storage floor of order entry: bare writes of the same position rows in 5 ms group
commits, in a process of its own, with no server, no websocket and no position book.

A generator adds the offered rows per second every millisecond (the rows a
``position.open`` stores: a new id, the account, the instrument, side, quantity and
price as exact decimal text, ``opened_ts``). Group commit as the flusher does it: the
first row that arrives while nothing is waiting opens a window; ``window_ms`` later
everything waiting is written in one transaction; rows that arrive meanwhile open the
next window, and a write that took longer than a window is followed at once by the
next. **Latency** of a row = the end of its commit - the moment it was added: what an
ack would wait for with nothing else in the way.

- SQLite: ``BEGIN IMMEDIATE`` + ``executemany`` of a plain ``INSERT`` + ``COMMIT`` in one
  writer thread on one connection, the backend's pragmas (WAL, ``synchronous=NORMAL``,
  auto-checkpoint off) and its checkpoints in a thread of their own
  (``publish.storage.wal.WalCheckpointer``, as ``SqliteBackend`` runs them: with SQLite's
  own auto-checkpoint, a commit every few hundred would carry a checkpoint's fsync), the
  backend's schema (created by ``SqliteBackend``).
- PostgreSQL: one text ``COPY`` per transaction on one asyncpg connection, with
  ``synchronous_commit`` on (a position is acknowledged once it is flushed), the
  backend's schema (created by ``PostgresBackend``) in a schema of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from hdrh.histogram import HdrHistogram

from bench.agent import Command, HelperProcess, serve_commands
from bench.pacing import due_each_tick
from bench.report import latency_histogram
from publish.storage.sqlite import SqliteBackend
from publish.storage.wal import WalCheckpointer

TICK = 0.001
PositionParams = tuple[str, str, str, str, str, str, int]
"""id, account, instrument, side, qty, entry_px (exact decimal text), opened_ts."""
COLUMNS = ("id", "account", "instrument", "side", "qty", "entry_px", "opened_ts")
Ticket = TypeVar("Ticket")


@dataclass(frozen=True, slots=True)
class FloorSpec:
    backend: str
    """``sqlite`` (``path``) or ``postgres`` (``dsn``, ``schema``)."""
    accounts: int
    instruments: tuple[str, ...]
    window_ms: float = 5.0
    path: str = ""
    dsn: str = ""
    schema: str = ""


@dataclass(frozen=True, slots=True)
class StorageTrial:
    """One measured window of the storage floor (a ``bench.ramp.Trial``)."""

    seconds: float
    added: int
    committed: int
    latency: HdrHistogram
    """Row added -> its commit done, for every row committed in the window, ns."""
    cpu_seconds: float
    """CPU time of the floor's process (its loop and its writer thread)."""

    @property
    def offered(self) -> float:
        return self.added / self.seconds

    @property
    def delivered(self) -> float:
        return self.committed / self.seconds

    @property
    def p99_ns(self) -> float:
        if not self.latency.get_total_count():
            return float("inf")
        return float(self.latency.get_value_at_percentile(99))

    @property
    def failures(self) -> int:
        return 0


class Writer(Protocol):
    async def open(self) -> None: ...

    async def write(self, rows: Sequence[PositionParams]) -> None: ...

    async def close(self) -> None: ...


_INSERT = f"INSERT INTO positions ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)"


class SqliteWriter:
    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor-writer")
        self._conn: sqlite3.Connection | None = None
        self._checkpointer = WalCheckpointer(path, synchronous="NORMAL")

    async def open(self) -> None:
        backend = SqliteBackend(Path(self._path))  # the schema, as marketcast creates it
        await backend.open()
        await backend.close()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
        self._checkpointer.start()

    def _connect(self) -> None:
        self._conn = sqlite3.connect(self._path, isolation_level=None)
        self._checkpointer.configure_writer(self._conn)

    async def write(self, rows: Sequence[PositionParams]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._write, rows)

    def _write(self, rows: Sequence[PositionParams]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
        self._checkpointer.request(len(rows))

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)
        await self._checkpointer.close()


class PostgresWriter:
    def __init__(self, dsn: str, schema: str) -> None:
        self._dsn = dsn
        self._schema = schema
        self._conn: Any = None

    async def open(self) -> None:
        import asyncpg

        from publish.storage.postgres import PostgresBackend

        backend = PostgresBackend(self._dsn, schema=self._schema)  # the schema
        await backend.open()
        await backend.close()
        self._conn = await asyncpg.connect(self._dsn)

    async def write(self, rows: Sequence[PositionParams]) -> None:
        text = "".join(
            f"{i}\t{account}\t{instrument}\t{side}\t{qty}\t{price}\t{opened}\n"
            for i, account, instrument, side, qty, price, opened in rows
        ).encode()

        async def source() -> Any:
            yield text

        async with self._conn.transaction():
            await self._conn.copy_to_table(
                "positions",
                schema_name=self._schema,
                columns=COLUMNS,
                source=source(),
                format="text",
            )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


class RowSource:
    """Fresh position rows: a new id each, accounts and instruments in turn."""

    def __init__(self, accounts: int, instruments: Sequence[str]) -> None:
        self._accounts = [f"acct-{i:05d}" for i in range(accounts)]
        self._instruments = list(instruments)
        self._next = 0

    def row(self) -> PositionParams:
        n = self._next
        self._next = n + 1
        return (
            f"f{n}",
            self._accounts[n % len(self._accounts)],
            self._instruments[n % len(self._instruments)],
            "buy" if n & 1 else "sell",
            f"0.{1 + n % 9}",
            f"43000.{n % 10}",
            time.time_ns(),
        )


class GroupCommit(Generic[Ticket]):
    """Rows written in group commits (module docstring), each with a ticket of its
    adder's; ``committed`` hears each commit's rows and tickets once it is done."""

    def __init__(
        self,
        writer: Writer,
        window_ms: float,
        committed: Callable[[list[tuple[PositionParams, Ticket]]], None],
    ) -> None:
        self._writer = writer
        self._window = window_ms / 1000
        self._committed = committed
        self._pending: list[tuple[PositionParams, Ticket]] = []
        self._first = 0.0
        """Loop time when the oldest waiting row arrived (its window opened)."""
        self._arrived = asyncio.Event()
        self._stopping = False

    def add(self, row: PositionParams, ticket: Ticket) -> None:
        """Queue ``row`` for the next commit. O(1)."""
        if not self._pending:
            self._first = asyncio.get_running_loop().time()
            self._arrived.set()
        self._pending.append((row, ticket))

    def stop(self) -> None:
        """``commit`` returns once no write is in progress (the one going on commits)."""
        self._stopping = True
        self._arrived.set()

    async def commit(self) -> None:
        """Write a group commit per window until ``stop``. A write is never cancelled
        halfway: asyncpg's connection would be left inside the transaction (and COPY),
        and the next trial's write refused."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._arrived.wait()
            if self._stopping:
                return
            await asyncio.sleep(max(0.0, self._first + self._window - loop.time()))
            batch, self._pending = self._pending, []
            self._arrived.clear()
            await self._writer.write([row for row, _ in batch])
            self._committed(batch)
            if self._pending:
                self._arrived.set()  # rows arrived during the write: their window is due


class _Tally:
    """The floor's rows: how many were added and committed while measuring, and each
    one's latency (its ticket is the moment it was added, ns)."""

    def __init__(self) -> None:
        self.measuring = False
        self.added = 0
        self.committed = 0
        self.latency = latency_histogram()

    def commit_done(self, batch: list[tuple[PositionParams, int]]) -> None:
        done = time.perf_counter_ns()
        if not self.measuring:
            return
        self.committed += len(batch)
        counts: dict[int, int] = {}
        for _, added in batch:
            counts[added] = counts.get(added, 0) + 1
        for added, count in counts.items():
            self.latency.record_value(max(1, done - added), count)


async def _offer(group: GroupCommit[int], rows: RowSource, rate: float, tally: _Tally) -> None:
    """Add ``rate`` rows per second to ``group``, every ``TICK``."""
    async for due in due_each_tick(rate, TICK):
        now = time.perf_counter_ns()
        for _ in range(due):
            group.add(rows.row(), now)
        if tally.measuring:
            tally.added += due


async def trial(
    writer: Writer, rows: RowSource, window_ms: float, rate: float, warmup: float, seconds: float
) -> StorageTrial:
    tally = _Tally()
    group = GroupCommit(writer, window_ms, tally.commit_done)
    async with asyncio.TaskGroup() as tasks:
        offering = tasks.create_task(_offer(group, rows, rate, tally))
        committing = tasks.create_task(group.commit())
        await asyncio.sleep(warmup)
        tally.measuring = True
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        tally.measuring = False
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        offering.cancel()
        group.stop()
        await committing
    return StorageTrial(elapsed, tally.added, tally.committed, tally.latency, cpu)


class _FloorSide:
    def __init__(self) -> None:
        self._writer: Writer | None = None
        self._rows: RowSource | None = None
        self._window_ms = 5.0

    async def handle(self, command: Command) -> Command:
        match command:
            case ("start", FloorSpec() as spec):
                writer: Writer = (
                    PostgresWriter(spec.dsn, spec.schema)
                    if spec.backend == "postgres"
                    else SqliteWriter(spec.path)
                )
                await writer.open()
                self._writer, self._rows = writer, RowSource(spec.accounts, spec.instruments)
                self._window_ms = spec.window_ms
                return ("started",)
            case ("trial", float(rate), float(warmup), float(seconds)):
                assert self._writer is not None and self._rows is not None
                result = await trial(
                    self._writer, self._rows, self._window_ms, rate, warmup, seconds
                )
                return (
                    "trial",
                    result.seconds,
                    result.added,
                    result.committed,
                    result.latency.encode(),
                    result.cpu_seconds,
                )
            case ("exit",):
                if self._writer is not None:
                    with contextlib.suppress(Exception):
                        await self._writer.close()
                    self._writer = None
                return ("stopped",)
        raise ValueError(f"unknown command {command!r}")


def _floor_main(pipe: Connection) -> None:
    serve_commands(pipe, _FloorSide().handle)


class StorageFloorProcess(HelperProcess):
    """A process writing position rows in group commits (blocking calls)."""

    def __init__(self, spec: FloorSpec) -> None:
        self.spec = spec
        super().__init__(_floor_main, "start", spec)

    def trial(self, rate: float, warmup: float, seconds: float) -> StorageTrial:
        _, elapsed, added, committed, encoded, cpu = self._agent.ask(
            "trial", float(rate), float(warmup), float(seconds)
        )
        latency = latency_histogram()
        latency.decode_and_add(encoded)
        return StorageTrial(elapsed, added, committed, latency, cpu)
