"""SQLite storage backend: the embedded default.

Every database call runs in one dedicated writer thread that owns the connection, so
the event loop never waits on disk I/O or a lock, and calls run in submission order (a
``close()`` runs after every write handed over before it). Prices and quantities are
stored as exact decimal text (``book.fixed.format_fixed``), never REAL, so
``"0.00000001"`` reads back as written.

Checkpoints never run inside a write: the writer connection has WAL auto-checkpoint
off and hands them to a thread of their own (``publish.storage.wal.WalCheckpointer``),
which also keeps the WAL from staying large once a long reader lets go of it.
``wal_bytes()`` is the file's size now (exported as ``marketcast_db_wal_bytes``).

Reads of market data (``bbo_history``, and what ``marketcast archive`` reads) run in a
third thread with a read-only connection of its own, one page per statement: in WAL
mode a reader never blocks the writer, and each statement is its own short read
transaction, so a long history read never holds back a checkpoint either. Pruning
(``prune``) and the archive's deletes are writes: they run in the writer thread between
batches, each one short transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from enum import StrEnum
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeVar

from book.fixed import format_fixed, parse_fixed
from publish.position import PositionSide
from publish.storage.backend import (
    Batch,
    PositionKey,
    WriteDone,
    taken_new_positions,
    unsettled_keys,
)
from publish.storage.exceptions import BackendClosedError, SchemaVersionError, StorageError
from publish.storage.rows import BboRow, FeedEventRow, PositionRow
from publish.storage.wal import JOURNAL_SIZE_LIMIT, WalCheckpointer

_T = TypeVar("_T")


class SqliteSync(StrEnum):
    """``PRAGMA synchronous``: which failure a committed batch survives.

    With WAL, ``NORMAL`` fsyncs only at checkpoints: a commit is in the WAL file (the OS
    page cache) before ``write_batch`` returns, so it survives the process crashing or
    being killed, which is what acknowledged positions need; the last commits can be lost
    on power loss or an OS crash. ``FULL`` also fsyncs the WAL at every commit and
    survives those, at one fsync per batch (one per 5 ms window at most).
    """

    NORMAL = "NORMAL"
    FULL = "FULL"


# Migration N (1-based) turns schema version N-1 into N; append, never edit, so an
# existing database is brought forward by running the ones after its stored version.
# bbo is indexed by ts_recv (our clock, always set) rather than ts_event, which some
# venues do not send. The partial index keeps the startup reload of open positions
# proportional to the open ones, not to every position ever closed.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE bbo (
            ts_event INTEGER NOT NULL,
            ts_recv INTEGER NOT NULL,
            venue TEXT NOT NULL,
            symbol TEXT NOT NULL,
            seq INTEGER NOT NULL,
            bid_px TEXT,
            bid_qty TEXT,
            ask_px TEXT,
            ask_qty TEXT
        )""",
        "CREATE INDEX bbo_venue_symbol_ts ON bbo (venue, symbol, ts_recv)",
        """CREATE TABLE positions (
            id TEXT NOT NULL,
            account TEXT NOT NULL,
            instrument TEXT NOT NULL,
            side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
            qty TEXT NOT NULL,
            entry_px TEXT NOT NULL,
            opened_ts INTEGER NOT NULL,
            closed_ts INTEGER,
            PRIMARY KEY (account, id)
        )""",
        "CREATE INDEX positions_open ON positions (opened_ts) WHERE closed_ts IS NULL",
        """CREATE TABLE feed_events (
            ts INTEGER NOT NULL,
            venue TEXT NOT NULL,
            instrument TEXT,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX feed_events_venue_ts ON feed_events (venue, ts)",
    ),
    # The ids of positions ``marketcast archive`` moved out: they stay taken.
    (
        """CREATE TABLE archived_positions (
            account TEXT NOT NULL,
            id TEXT NOT NULL,
            PRIMARY KEY (account, id)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_BBO_COLUMNS = 9
_BBO_ROWS_PER_INSERT = 64
"""BBO rows per ``INSERT`` statement. ``sqlite3`` releases the GIL around every statement
step, so one row per step makes the writer thread hand the GIL back and forth with the
event loop per row, and under load it waits for it each time; 64 rows per step (576
parameters, far below SQLite's limit) divides those hand-overs by 64."""


@cache
def _insert_bbo(rows: int) -> str:
    """``INSERT`` of ``rows`` BBO rows (one ``VALUES`` tuple each); a handful of sizes."""
    values = "(" + ", ".join("?" * _BBO_COLUMNS) + ")"
    return (
        "INSERT INTO bbo (ts_event, ts_recv, venue, symbol, seq, bid_px, bid_qty, ask_px, ask_qty)"
        " VALUES " + ", ".join([values] * rows)
    )


_POSITION_COLUMNS = "id, account, instrument, side, qty, entry_px, opened_ts, closed_ts"
_UPSERT_POSITION = (
    "INSERT INTO positions"
    " (id, account, instrument, side, qty, entry_px, opened_ts, closed_ts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (account, id) DO UPDATE SET"
    " instrument = excluded.instrument, side = excluded.side, qty = excluded.qty,"
    " entry_px = excluded.entry_px, opened_ts = excluded.opened_ts,"
    " closed_ts = excluded.closed_ts"
)
_KEYS_PER_STATEMENT = 64
"""Keys per read of stored positions (128 parameters, far below SQLite's limit)."""
_NEW_POSITION_COLUMNS = 8
_EXACT_INSERT_ROWS = 64
"""New positions per ``INSERT`` are taken as they come up to this many; a larger batch is
padded to the next power of two (``_new_position_inserts``)."""


def _parameters_per_statement() -> int:
    """How many parameters this SQLite library takes in one statement."""
    with closing(sqlite3.connect(":memory:")) as conn:
        return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


_NEW_POSITIONS_PER_INSERT = min(1_024, _parameters_per_statement() // _NEW_POSITION_COLUMNS)
"""New positions per ``INSERT`` at most: 1,024 (8,192 parameters) where this SQLite takes
that many parameters (32,766 since 3.32), else as many as it takes (999 before)."""


@cache
def _insert_new_positions(rows: int, *, all_open: bool) -> str:
    """``INSERT`` of ``rows`` new positions, skipping taken ids (a stored position, or an
    archived id); its ``rowcount`` says how many went in. One ``VALUES`` tuple of bound
    parameters per row, which SQLite reads as they are. Its JSON twin (one parameter,
    unpacked by SQLite's ``json_each``) cost SQLite 39,000 instructions a row against
    24,000 (callgrind, 50-row batches), the parsing all its own. Binding holds the GIL in
    the writer thread (about 7,000 instructions a row, in the server's count); the step
    does not, and one statement up to 1,024 rows means one step a batch, as the JSON
    twin had (64 rows a statement inside ``BEGIN IMMEDIATE``/``COMMIT`` had cost the
    writer p50 1.5-1.9 ms at 20,000 opens/s on the benchmark VM, against 0.7-0.8).

    ``all_open``: every row's ``closed_ts`` is ``NULL``, written in the SQL rather than
    bound: ``sqlite3`` looks for an adapter for every ``None`` it binds (about 4,000
    instructions), where a ``str`` or an ``int`` goes straight in."""
    values = ", ".join(
        ["(?, ?, ?, ?, ?, ?, ?, NULL)" if all_open else "(?, ?, ?, ?, ?, ?, ?, ?)"] * rows
    )
    return (
        f"INSERT INTO positions ({_POSITION_COLUMNS})"
        f" SELECT * FROM (VALUES {values}) AS new"
        " WHERE NOT EXISTS (SELECT 1 FROM archived_positions AS a"
        " WHERE a.account = new.column2 AND a.id = new.column1)"
        " ON CONFLICT (account, id) DO NOTHING"
    )


NewPositionInsert = tuple[str, list[int | str | None]]
"""One ``INSERT`` of new positions and its parameters."""


def _new_position_inserts(rows: list[PositionRow]) -> list[NewPositionInsert]:
    """The ``INSERT``s of ``rows`` with their parameters: one for up to
    ``_NEW_POSITIONS_PER_INSERT`` rows. O(rows), on the event loop (which holds the GIL
    anyway), so the writer thread only binds and steps.

    So that the statements stay few (``sqlite3`` caches them by their text, and each is a
    program of about 1 KB a row), a statement of more than ``_EXACT_INSERT_ROWS`` rows is
    padded to the next power of two with copies of its last row: the first copy in goes
    in or is skipped as that row is, every later one meets it and does nothing, so
    neither what is stored nor the ``rowcount`` changes (a primary-key probe each). So
    at most 64 + 4 statements of open positions (the book's), whatever the load, and as
    many for batches that hold a closed one."""
    inserts: list[NewPositionInsert] = []
    for start in range(0, len(rows), _NEW_POSITIONS_PER_INSERT):
        chunk = rows[start : start + _NEW_POSITIONS_PER_INSERT]
        all_open = all(row.closed_ts is None for row in chunk)
        columns = _NEW_POSITION_COLUMNS - 1 if all_open else _NEW_POSITION_COLUMNS
        params = [value for row in chunk for value in _position_params(row)[:columns]]
        size = len(chunk)
        if size > _EXACT_INSERT_ROWS:
            size = min(1 << (size - 1).bit_length(), _NEW_POSITIONS_PER_INSERT)
            params += params[-columns:] * (size - len(chunk))
        inserts.append((_insert_new_positions(size, all_open=all_open), params))
    return inserts


@cache
def _stored_under(keys: int) -> str:
    """The stored positions and archived ids of ``keys`` ``(account, id)`` pairs, in one
    statement: position columns, then 1 for an archived id (its other columns NULL)."""
    # CROSS JOIN keeps the keys the outer loop: a primary-key probe per key, never a scan.
    pairs = ", ".join(["(?, ?)"] * keys)
    return (
        f"WITH k (account, id) AS (VALUES {pairs})"
        " SELECT p.id, p.account, p.instrument, p.side, p.qty, p.entry_px, p.opened_ts,"
        " p.closed_ts, 0 FROM k CROSS JOIN positions AS p"
        " WHERE p.account = k.account AND p.id = k.id"
        " UNION ALL SELECT a.id, a.account, NULL, NULL, NULL, NULL, NULL, NULL, 1"
        " FROM k CROSS JOIN archived_positions AS a WHERE a.account = k.account AND a.id = k.id"
    )


_INSERT_FEED_EVENT = (
    "INSERT INTO feed_events (ts, venue, instrument, kind, detail) VALUES (?, ?, ?, ?, ?)"
)
_SELECT_OPEN_POSITIONS = (
    f"SELECT {_POSITION_COLUMNS} FROM positions"
    " WHERE closed_ts IS NULL ORDER BY opened_ts, account, id"
)
_HISTORY_PAGE = (
    "SELECT ts_event, ts_recv, seq, bid_px, bid_qty, ask_px, ask_qty, rowid FROM bbo"
    " WHERE venue = ? AND symbol = ? AND (ts_recv, rowid) > (?, ?) AND ts_recv < ?"
    " ORDER BY ts_recv, rowid LIMIT ?"
)
_OLD_BBO_PAGE = (
    "SELECT venue, symbol, ts_event, ts_recv, seq, bid_px, bid_qty, ask_px, ask_qty, rowid"
    " FROM bbo WHERE (venue, symbol, ts_recv, rowid) > (?, ?, ?, ?) AND ts_recv < ?"
    " ORDER BY venue, symbol, ts_recv, rowid LIMIT ?"
)
_CLOSED_POSITIONS_PAGE = (
    f"SELECT {_POSITION_COLUMNS} FROM positions"
    " WHERE closed_ts < ? AND (closed_ts, account, id) > (?, ?, ?)"
    " ORDER BY closed_ts, account, id LIMIT ?"
)
# Pruning looks at the oldest rows by storage order only (rowid: O(max_rows), no index
# on ts_recv to maintain on every write); rows are stored about in ts_recv order.
_PRUNE_BBO = (
    "DELETE FROM bbo WHERE rowid IN (SELECT rowid FROM bbo ORDER BY rowid LIMIT ?) AND ts_recv < ?"
)
_PRUNE_FEED_EVENTS = (
    "DELETE FROM feed_events WHERE rowid IN"
    " (SELECT rowid FROM feed_events ORDER BY rowid LIMIT ?) AND ts < ?"
)
_DELETE_BBO = "DELETE FROM bbo WHERE venue = ? AND symbol = ? AND ts_recv BETWEEN ? AND ?"
_KEEP_ARCHIVED_ID = (
    "INSERT OR IGNORE INTO archived_positions (account, id) SELECT account, id FROM positions"
    " WHERE account = ? AND id = ? AND closed_ts IS NOT NULL"
)
_DELETE_POSITION = "DELETE FROM positions WHERE account = ? AND id = ? AND closed_ts IS NOT NULL"
PAGE_ROWS = 2_000
"""Rows per read statement: ~2-4 ms of the reader thread, ~0.5 MB of rows in memory."""


class SqliteBackend:
    """``StorageBackend`` on one SQLite file in WAL mode.

    ``write_batch`` costs one ``BEGIN IMMEDIATE``/``COMMIT`` plus one ``executemany`` per
    table, O(rows) in the writer thread (decimal formatting included), and for new
    positions one ``INSERT`` of them all (a primary-key probe each; a taken id costs one
    more read for the batch; past 1,024, one per 1,024), its parameters made on the event
    loop; a batch of new positions alone is that ``INSERT`` alone (``_one_insert``).
    ``busy_timeout_ms`` is how long a write waits for another connection's lock before
    failing (the flusher then retries); ``journal_size_limit`` is the WAL size, in bytes,
    it is brought back under once readers allow (see the module docstring).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: SqliteSync = SqliteSync.NORMAL,
        busy_timeout_ms: int = 5000,
        journal_size_limit: int = JOURNAL_SIZE_LIMIT,
    ) -> None:
        if journal_size_limit < 0:
            raise ValueError("journal_size_limit must be 0 or more")
        self._path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._executor: ThreadPoolExecutor | None = None
        self.checkpointer = WalCheckpointer(
            self._path, synchronous=synchronous.value, journal_size_limit=journal_size_limit
        )
        self._reader: ThreadPoolExecutor | None = None
        # Only ever touched in the reader thread.
        self._reader_conn: sqlite3.Connection | None = None
        # Only ever touched in the writer thread.
        self._conn: sqlite3.Connection | None = None

    @property
    def name(self) -> str:
        return "sqlite"

    def wal_bytes(self) -> int:
        """The size of the WAL file now (0 when there is none). One ``stat``; any thread."""
        return self.checkpointer.wal_bytes()

    async def open(self) -> None:
        if self._executor is not None:
            raise StorageError(f"{self._path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self.checkpointer.start()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        try:
            await self._call(self._open_sync)
        except BaseException:
            await self.close()
            raise

    def write_batch(self, batch: Batch, done: WriteDone) -> None:
        """Hand the batch to the writer thread now; when the thread has committed it, it
        schedules ``done`` on the loop itself (``call_soon_threadsafe``), so ``done``
        runs in the first turn that hears of it (``StorageBackend.write_batch``)."""
        if self._executor is None:
            raise BackendClosedError(f"{self._path} is not open")
        # The new positions' statements are made here, on the loop, which holds the GIL
        # anyway.
        inserts = _new_position_inserts(batch.new_positions)
        job = self._insert_alone_sync if _one_insert(batch, inserts) else self._write_sync
        ended = self._executor.submit(job, batch, inserts)
        loop = asyncio.get_running_loop()
        ended.add_done_callback(lambda ended: loop.call_soon_threadsafe(_tell, done, ended))

    async def load_open_positions(self) -> list[PositionRow]:
        return await self._call(self._load_open_positions_sync)

    async def bbo_history(
        self,
        venue: str,
        symbol: str,
        *,
        start_ns: int,
        end_ns: int,
        limit: int | None,
        page_rows: int = PAGE_ROWS,
    ) -> AsyncGenerator[list[BboRow], None]:
        """See ``BboHistoryReader``: keyset pages on the (venue, symbol, ts_recv) index,
        O(page) per statement, in the reader thread."""
        after = (start_ns, 0)  # (ts_recv, rowid); rowids start at 1
        left = limit
        while left is None or left > 0:
            size = page_rows if left is None else min(page_rows, left)
            job = partial(self._history_page_sync, venue, symbol, after, end_ns, size)
            page, after = await self._read(job)
            if page:
                yield page
            if len(page) < size:
                return
            if left is not None:
                left -= len(page)

    @property
    def prune_blocks_writes(self) -> bool:
        return True  # the writer thread runs it

    async def prune(self, before_ns: int, max_rows: int) -> int:
        """See ``PrunableBackend``; the larger of the two counts deleted."""
        return await self._call(partial(self._prune_sync, before_ns, max_rows))

    async def bbo_before(
        self, before_ns: int, *, page_rows: int = PAGE_ROWS
    ) -> AsyncGenerator[list[BboRow], None]:
        after: tuple[str, str, int, int] = ("", "", 0, 0)
        while True:
            page, after = await self._read(
                partial(self._old_bbo_page_sync, after, before_ns, page_rows)
            )
            if page:
                yield page
            if len(page) < page_rows:
                return

    async def delete_bbo(self, venue: str, symbol: str, first_ns: int, last_ns: int) -> int:
        return await self._call(partial(self._delete_bbo_sync, venue, symbol, first_ns, last_ns))

    async def closed_positions_before(
        self, before_ns: int, *, page_rows: int = PAGE_ROWS
    ) -> AsyncGenerator[list[PositionRow], None]:
        after: tuple[int, str, str] = (-1, "", "")
        while True:
            page = await self._read(
                partial(self._closed_positions_page_sync, after, before_ns, page_rows)
            )
            if page:
                yield page
                last = page[-1]
                after = (last.closed_ts or 0, last.account, last.id)
            if len(page) < page_rows:
                return

    async def delete_positions(self, keys: Sequence[tuple[str, str]]) -> int:
        return await self._call(partial(self._delete_positions_sync, list(keys)))

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        reader, self._reader = self._reader, None
        if executor is None or reader is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(reader, self._close_reader_sync)
        finally:
            reader.shutdown(wait=False)
        try:
            await loop.run_in_executor(executor, self._close_sync)
        finally:
            # The close job is already queued behind any write still running, so the
            # thread exits after it without anyone having to block on a join. The writer
            # requests no checkpoint after closing, so the checkpoint close runs last.
            executor.shutdown(wait=False)
            await self.checkpointer.close()

    async def _call(self, job: Callable[[], _T]) -> _T:
        """``job`` run in the writer thread, after the writes handed to it before."""
        if self._executor is None:
            raise BackendClosedError(f"{self._path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def _read(self, job: Callable[[], _T]) -> _T:
        if self._reader is None:
            raise BackendClosedError(f"{self._path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._reader, job)

    # The reader thread.

    def _reading(self) -> sqlite3.Connection:
        conn = self._reader_conn
        if conn is None:
            conn = sqlite3.connect(
                self._path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
            )
            conn.execute("PRAGMA query_only = ON")
            self._reader_conn = conn
        return conn

    def _history_page_sync(
        self, venue: str, symbol: str, after: tuple[int, int], end_ns: int, size: int
    ) -> tuple[list[BboRow], tuple[int, int]]:
        query = (venue, symbol, *after, end_ns, size)
        rows = self._reading().execute(_HISTORY_PAGE, query).fetchall()
        page = [
            BboRow(ts_event, ts_recv, venue, symbol, seq, *_amounts(amounts))
            for ts_event, ts_recv, seq, *amounts, _ in rows
        ]
        return page, (rows[-1][1], rows[-1][-1]) if rows else after

    def _old_bbo_page_sync(
        self, after: tuple[str, str, int, int], before_ns: int, size: int
    ) -> tuple[list[BboRow], tuple[str, str, int, int]]:
        rows = self._reading().execute(_OLD_BBO_PAGE, (*after, before_ns, size)).fetchall()
        page = [
            BboRow(ts_event, ts_recv, venue, symbol, seq, *_amounts(amounts))
            for venue, symbol, ts_event, ts_recv, seq, *amounts, _ in rows
        ]
        if not rows:
            return page, after
        venue, symbol, _, ts_recv, *_, rowid = rows[-1]
        return page, (venue, symbol, ts_recv, rowid)

    def _closed_positions_page_sync(
        self, after: tuple[int, str, str], before_ns: int, size: int
    ) -> list[PositionRow]:
        rows = self._reading().execute(_CLOSED_POSITIONS_PAGE, (before_ns, *after, size))
        return [_position(row) for row in rows.fetchall()]

    def _close_reader_sync(self) -> None:
        if self._reader_conn is not None:
            self._reader_conn.close()
            self._reader_conn = None

    # Everything below runs in the writer thread.

    def _open_sync(self) -> None:
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
        )
        try:
            self.checkpointer.configure_writer(conn)
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _write_sync(self, batch: Batch, inserts: list[NewPositionInsert]) -> frozenset[int]:
        conn = self._connection()
        with _transaction(conn):
            _insert_bbo_rows(conn, batch.bbo)
            taken = _insert_new_positions_sync(conn, batch.new_positions, inserts)
            conn.executemany(_UPSERT_POSITION, map(_position_params, batch.positions))
            conn.executemany(_INSERT_FEED_EVENT, map(_feed_event_params, batch.feed_events))
        self.checkpointer.request(len(batch))
        return taken

    def _insert_alone_sync(self, batch: Batch, inserts: list[NewPositionInsert]) -> frozenset[int]:
        """A batch of new positions only (``_one_insert``): their one ``INSERT`` runs
        alone."""
        taken = _insert_new_positions_sync(self._connection(), batch.new_positions, inserts)
        self.checkpointer.request(len(batch))
        return taken

    def _load_open_positions_sync(self) -> list[PositionRow]:
        return [
            _position(row) for row in self._connection().execute(_SELECT_OPEN_POSITIONS).fetchall()
        ]

    def _prune_sync(self, before_ns: int, max_rows: int) -> int:
        conn = self._connection()
        with _transaction(conn):
            bbo = conn.execute(_PRUNE_BBO, (max_rows, before_ns)).rowcount
            feed_events = conn.execute(_PRUNE_FEED_EVENTS, (max_rows, before_ns)).rowcount
        if bbo or feed_events:
            self.checkpointer.request(bbo + feed_events)
        return max(bbo, feed_events)

    def _delete_bbo_sync(self, venue: str, symbol: str, first_ns: int, last_ns: int) -> int:
        conn = self._connection()
        with _transaction(conn):
            deleted: int = conn.execute(_DELETE_BBO, (venue, symbol, first_ns, last_ns)).rowcount
        self.checkpointer.request(deleted)
        return deleted

    def _delete_positions_sync(self, keys: list[tuple[str, str]]) -> int:
        conn = self._connection()
        with _transaction(conn):
            conn.executemany(_KEEP_ARCHIVED_ID, keys)
            deleted: int = conn.executemany(_DELETE_POSITION, keys).rowcount
        self.checkpointer.request(deleted + len(keys))  # archived ids kept, then deleted
        return deleted

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackendClosedError(f"{self._path} is not open")
        return self._conn


def _tell(done: WriteDone, ended: Future[frozenset[int]]) -> None:
    """On the loop: the writer thread's outcome of a write, to its ``done``."""
    error = ended.exception()
    done(ended.result() if error is None else error)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a busy database fails the batch at
    # BEGIN instead of halfway through it.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _one_insert(batch: Batch, inserts: list[NewPositionInsert]) -> bool:
    """A batch of new positions only (order entry's, a positions shard's) that one
    ``INSERT`` takes (``_new_position_inserts``): it is written alone, without ``BEGIN
    IMMEDIATE`` and ``COMMIT``. SQLite makes one statement atomic by itself (an implicit
    transaction, committed as durably as an explicit one), and there is no "halfway" for
    the immediate lock to prevent. Two statements fewer, and above all two fewer times
    that the writer thread must take the GIL back from a busy event loop: in the
    order-entry path at 5,000 opens/s (in-process, 25 rows a batch), the writer's part
    went from p50 0.58-0.68 / p99 1.6-2.8 ms to 0.42-0.48 / 0.9-1.2 ms. The read of
    skipped keys that may follow sees every committed row, which is all it needs (the
    stored row says whether it is the new one). PostgreSQL does the same
    (``PostgresBackend._alone``)."""
    return len(inserts) == 1 and not (batch.bbo or batch.positions or batch.feed_events)


def _migrate(conn: sqlite3.Connection) -> None:
    # One transaction for the check and every step, so two processes opening a new file
    # at once cannot both run migration 1.
    with _transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database schema version {current} is newer than {SCHEMA_VERSION}, "
                "the newest this version of marketcast knows"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))


def _insert_bbo_rows(conn: sqlite3.Connection, rows: list[BboRow]) -> None:
    """``rows`` in statements of ``_BBO_ROWS_PER_INSERT`` rows plus one for the rest."""
    params: list[int | str | None] = []
    extend, text = params.extend, format_fixed
    for row in rows:  # ~1 µs per row: a tuple and four memoized format_fixed lookups
        bid, bid_qty, ask, ask_qty = row.bid_px, row.bid_qty, row.ask_px, row.ask_qty
        extend(
            (
                row.ts_event,
                row.ts_recv,
                row.venue,
                row.symbol,
                row.seq,
                None if bid is None else text(bid),
                None if bid_qty is None else text(bid_qty),
                None if ask is None else text(ask),
                None if ask_qty is None else text(ask_qty),
            )
        )
    width = _BBO_ROWS_PER_INSERT * _BBO_COLUMNS
    full = len(rows) // _BBO_ROWS_PER_INSERT
    conn.executemany(
        _insert_bbo(_BBO_ROWS_PER_INSERT),
        (params[start : start + width] for start in range(0, full * width, width)),
    )
    if rest := len(rows) - full * _BBO_ROWS_PER_INSERT:
        conn.execute(_insert_bbo(rest), params[full * width :])


def _insert_new_positions_sync(
    conn: sqlite3.Connection, rows: list[PositionRow], inserts: list[NewPositionInsert]
) -> frozenset[int]:
    """Insert ``rows`` (``inserts``: ``_new_position_inserts`` of them) where their ids are
    free; the indices of those whose id another position holds (see
    ``publish.storage.backend``).

    When every row went in (the statements' ``rowcount``) they did so under keys of their
    own, and nothing is read back; otherwise every key is read back (the stored row says
    whether it is the new one). Counting is cheaper than having the insert return each
    key (``RETURNING``: a row of two new strings per position), and a batch of fresh
    ids, the usual one, reads nothing back."""
    inserted = sum(conn.execute(sql, params).rowcount for sql, params in inserts)
    if inserted == len(rows):
        return frozenset()
    return _settle_new_positions(conn, rows)


def _settle_new_positions(conn: sqlite3.Connection, rows: list[PositionRow]) -> frozenset[int]:
    """The indices of ``rows`` taken by another position, once their insert ran and did
    not put every one in: every key is read back."""
    inserted: frozenset[PositionKey] = frozenset()  # none known: the insert only counts
    stored: dict[PositionKey, PositionRow | None] = {}
    unsettled = unsettled_keys(rows, inserted)
    for start in range(0, len(unsettled), _KEYS_PER_STATEMENT):
        chunk_keys = unsettled[start : start + _KEYS_PER_STATEMENT]
        pairs = [value for key in chunk_keys for value in key]
        for *columns, archived in conn.execute(_stored_under(len(chunk_keys)), pairs):
            key = (columns[1], columns[0])
            if archived:  # an archived id wins over a stored row (there is none, normally)
                stored[key] = None
            else:
                stored.setdefault(key, _position(tuple(columns)))
    return taken_new_positions(rows, inserted, stored)


def _amounts(texts: list[str | None]) -> tuple[int | None, ...]:
    return tuple(None if text is None else parse_fixed(text) for text in texts)


def _position(row: tuple[Any, ...]) -> PositionRow:
    id_, account, instrument, side, qty, entry_px, opened_ts, closed_ts = row
    return PositionRow(
        id=id_,
        account=account,
        instrument=instrument,
        side=PositionSide(side),
        qty=parse_fixed(qty),
        entry_price=parse_fixed(entry_px),
        opened_ts=opened_ts,
        closed_ts=closed_ts,
    )


def _position_params(row: PositionRow) -> tuple[int | str | None, ...]:
    return (
        row.id,
        row.account,
        row.instrument,
        str(row.side),  # a StrEnum's text; .value is a Python-level property
        format_fixed(row.qty),
        format_fixed(row.entry_price),
        row.opened_ts,
        row.closed_ts,
    )


def _feed_event_params(row: FeedEventRow) -> tuple[int | str | None, ...]:
    return (row.ts, row.venue, row.instrument, row.kind.value, row.detail)
