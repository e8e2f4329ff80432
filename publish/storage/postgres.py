"""PostgreSQL storage backend (asyncpg): the production database.

The same logical schema as SQLite, in one PostgreSQL schema (``public`` unless told),
with prices and quantities in ``NUMERIC`` columns: exact, never floats. One batch is
one transaction (a batch of new positions only, as in order entry and on a positions
shard, is its one ``INSERT``, and a batch of BBO rows only, as market data's flushes
mostly are, its one ``COPY``: each commits alone, in one round trip instead of the
three of ``BEGIN``, the statement and ``COMMIT``): ``bbo`` rows go in with ``COPY``,
new positions with one ``INSERT ... ON CONFLICT DO NOTHING`` from arrays (``unnest``)
that skips taken and archived ids and counts what went in, changed positions are
upserted, feed events go in with binary ``COPY`` (``copy_records_to_table``). Another
session inserting the same new id at the same time makes that insert wait for its commit
and then skip the row, so the following read of the batch's keys (only when some were
skipped) sees the row that took the id.

``bbo`` is copied in the binary format, encoded here (``publish.storage.pgcopy``): each
amount goes from the book's fixed-point int straight to ``NUMERIC``'s binary form, with
the display scale of its shortest exact text, so the server stores the very value and
text the text format stored and parses no decimal text. asyncpg's own binary ``NUMERIC``
encoder wants a ``Decimal`` per value, which cost 1.5-1.8 times the CPU on the event
loop and 2.7-2.8 times the server's write. Against the text format the backend used
before (shortest exact decimals, ``format_fixed``), on a slow 2-core VM with 500-row
batches: 1.20 against 1.37 µs a row to build, the ``COPY`` and its commit p50 8-12%
shorter. Encoded amounts, venues and symbols are memoized (market data repeats them).
The rows are encoded in chunks with a yield to the loop between them, so a large batch
never blocks the loop for more than one chunk.

Commits of batches without positions do not wait for the WAL flush: the writer's
connection starts with ``synchronous_commit=off``, a batch holding positions turns it on
for the session before its transaction and a batch without turns it off again (only when
the kind of batch changes, so a run of position batches pays no round trip for it), so a
position is on disk when its ack goes out.
Market data and feed events are acknowledged to no one (and dropped anyway when the
buffer overflows); a database crash can lose their last fraction of a second, never a
half batch, and a commit no longer waits for an fsync that a busy disk can stretch to
tens of milliseconds.

Market data is read back (``bbo_history``, and what ``marketcast archive`` reads) through
a server-side cursor on a connection of its own per read, in pages, so a long read
neither holds a page of the loop's memory for long nor waits behind (or holds up) the
flusher's writes. Pruning and the archive's deletes use a third connection: PostgreSQL
deletes old rows while the flusher inserts new ones, so neither waits for the other. Its
commits do not wait for the WAL flush either (``synchronous_commit=off``): a delete lost
in a database crash is done again by the next step or run (the archive only deletes
rows whose file is durable, so it then writes the same file again), and a step's
duration stays its own work, not an fsync shared with the flusher's position commits.

Two connections, each used by one operation at a time: the flusher's writes (and the
load of the open positions on start) and maintenance (pruning, the archive). Any failure
of an operation, a timeout included, closes its connection rather than trying to roll
back over a link that may be dead; the server aborts the open transaction, and the next
operation connects again. So an outage costs the flusher failed writes (which it
retries) and never a half-written batch. An operation fails within twice its timeout
even when its own cleanup hangs (asyncpg rolls back a cancelled statement only once the
server answered its cancel request, which a hung database never does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import asyncpg

from book.fixed import format_fixed, from_decimal
from publish.position import PositionSide
from publish.storage.backend import (
    Batch,
    PositionKey,
    WriteDone,
    taken_new_positions,
    unsettled_keys,
)
from publish.storage.exceptions import BackendClosedError, SchemaVersionError, StorageError
from publish.storage.pgcopy import COLUMNS as BBO_COLUMNS
from publish.storage.pgcopy import HEADER, TRAILER, BboCopyEncoder
from publish.storage.rows import BboRow, FeedEventRow, PositionRow

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

Connector = Callable[..., Awaitable[Any]]
"""``asyncpg.connect`` or anything called like it (the I/O seam)."""

# Migration N (1-based) turns schema version N-1 into N; append, never edit. ``{s}`` is
# the quoted schema name. The same tables, columns and indexes as the SQLite schema.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE {s}.bbo (
            ts_event BIGINT NOT NULL,
            ts_recv BIGINT NOT NULL,
            venue TEXT NOT NULL,
            symbol TEXT NOT NULL,
            seq BIGINT NOT NULL,
            bid_px NUMERIC,
            bid_qty NUMERIC,
            ask_px NUMERIC,
            ask_qty NUMERIC
        )""",
        "CREATE INDEX bbo_venue_symbol_ts ON {s}.bbo (venue, symbol, ts_recv)",
        """CREATE TABLE {s}.positions (
            id TEXT NOT NULL,
            account TEXT NOT NULL,
            instrument TEXT NOT NULL,
            side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
            qty NUMERIC NOT NULL,
            entry_px NUMERIC NOT NULL,
            opened_ts BIGINT NOT NULL,
            closed_ts BIGINT,
            PRIMARY KEY (account, id)
        )""",
        "CREATE INDEX positions_open ON {s}.positions (opened_ts) WHERE closed_ts IS NULL",
        """CREATE TABLE {s}.feed_events (
            ts BIGINT NOT NULL,
            venue TEXT NOT NULL,
            instrument TEXT,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX feed_events_venue_ts ON {s}.feed_events (venue, ts)",
    ),
    # The ids of positions ``marketcast archive`` moved out: they stay taken.
    (
        """CREATE TABLE {s}.archived_positions (
            account TEXT NOT NULL,
            id TEXT NOT NULL,
            PRIMARY KEY (account, id)
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_FEED_EVENT_COLUMNS = ("ts", "venue", "instrument", "kind", "detail")
_POSITION_COLUMNS = "id, account, instrument, side, qty, entry_px, opened_ts, closed_ts"
_COPY_CHUNK_ROWS = 128
"""BBO rows encoded per step of the event loop (~0.15 ms on a slow 2-core VM)."""
PAGE_ROWS = 2_000
"""Rows per page of a read (the cursor's prefetch)."""
# Key of the advisory lock held while migrating, so two servers starting on one new
# database cannot both run migration 1 (hashed with the schema name).
_MIGRATION_LOCK = "marketcast.schema."


class PostgresBackend:
    """``StorageBackend`` on PostgreSQL through two asyncpg connections (module docstring).

    ``write_batch`` costs one transaction: a binary ``COPY`` of the BBO rows (O(rows) of
    encoding on the event loop, ~1.2 µs per row in chunks of ``_COPY_CHUNK_ROWS``), one
    insert of the new positions (a primary-key probe each; a taken id costs one more read
    for the batch), one pipelined ``executemany`` upsert of the changed positions and a
    binary ``COPY`` of the feed events. ``timeout_ms`` bounds every operation (connecting
    included): past it the operation fails and the connection is closed, so a database
    that stops answering turns into failed writes the flusher retries, not a write that
    hangs forever.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        timeout_ms: float = 5_000.0,
        connect: Connector = asyncpg.connect,
    ) -> None:
        if not schema:
            raise ValueError("schema must not be empty")
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self._dsn = dsn
        self._schema = schema
        self._timeout = timeout_ms / 1000
        self._connect = connect
        s = _quote_ident(schema)
        self._migrations = tuple(
            tuple(statement.format(s=s) for statement in migration) for migration in _MIGRATIONS
        )
        self._upsert_position = (
            f"INSERT INTO {s}.positions ({_POSITION_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5::text::numeric, $6::text::numeric, $7, $8)"
            " ON CONFLICT (account, id) DO UPDATE SET"
            " instrument = excluded.instrument, side = excluded.side, qty = excluded.qty,"
            " entry_px = excluded.entry_px, opened_ts = excluded.opened_ts,"
            " closed_ts = excluded.closed_ts"
        )
        self._select_open = (
            f"SELECT {_POSITION_COLUMNS} FROM {s}.positions"
            " WHERE closed_ts IS NULL ORDER BY opened_ts, account, id"
        )
        # New positions as one array per column (amounts as decimal text), inserted in
        # their order where the id is free; its status counts the rows inserted.
        self._insert_new_positions = (
            f"INSERT INTO {s}.positions ({_POSITION_COLUMNS})"
            " SELECT id, account, instrument, side, qty::numeric, entry_px::numeric,"
            " opened_ts, closed_ts FROM unnest($1::text[], $2::text[], $3::text[],"
            " $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[])"
            f" WITH ORDINALITY AS new ({_POSITION_COLUMNS}, n)"
            f" WHERE NOT EXISTS (SELECT 1 FROM {s}.archived_positions AS a"
            " WHERE a.account = new.account AND a.id = new.id) ORDER BY n"
            " ON CONFLICT (account, id) DO NOTHING"
        )
        # The stored positions and archived ids of $1 (accounts) and $2 (their ids).
        self._stored_under = (
            "SELECT p.id, p.account, p.instrument, p.side, p.qty, p.entry_px, p.opened_ts,"
            " p.closed_ts, false AS archived"
            f" FROM unnest($1::text[], $2::text[]) AS k (account, id) JOIN {s}.positions AS p"
            " ON p.account = k.account AND p.id = k.id"
            " UNION ALL SELECT a.id, a.account, NULL, NULL, NULL, NULL, NULL, NULL, true"
            f" FROM unnest($1::text[], $2::text[]) AS k (account, id)"
            f" JOIN {s}.archived_positions AS a ON a.account = k.account AND a.id = k.id"
        )
        bbo_columns = "ts_event, ts_recv, venue, symbol, seq, bid_px, bid_qty, ask_px, ask_qty"
        self._history = (
            f"SELECT {bbo_columns} FROM {s}.bbo WHERE venue = $1 AND symbol = $2"
            " AND ts_recv >= $3 AND ts_recv < $4 ORDER BY ts_recv, seq LIMIT $5"
        )
        self._old_bbo = (
            f"SELECT {bbo_columns} FROM {s}.bbo WHERE ts_recv < $1"
            " ORDER BY venue, symbol, ts_recv, seq"
        )
        # Every (venue, symbol) of bbo in O(pairs * log rows): one index probe per pair.
        self._instruments = (
            "WITH RECURSIVE pairs AS ("
            f" (SELECT venue, symbol FROM {s}.bbo ORDER BY venue, symbol LIMIT 1)"
            " UNION ALL SELECT next.venue, next.symbol FROM pairs, LATERAL"
            f" (SELECT venue, symbol FROM {s}.bbo WHERE (venue, symbol) > (pairs.venue,"
            " pairs.symbol) ORDER BY venue, symbol LIMIT 1) AS next)"
            " SELECT venue, symbol FROM pairs"
        )
        self._prune_bbo = (
            f"DELETE FROM {s}.bbo WHERE ctid = ANY(ARRAY(SELECT ctid FROM {s}.bbo"
            " WHERE venue = $1 AND symbol = $2 AND ts_recv < $3 LIMIT $4))"
        )
        self._prune_feed_events = (
            f"DELETE FROM {s}.feed_events WHERE ctid = ANY(ARRAY(SELECT ctid FROM"
            f" {s}.feed_events WHERE ts < $1 LIMIT $2))"
        )
        self._delete_bbo = (
            f"DELETE FROM {s}.bbo WHERE venue = $1 AND symbol = $2 AND ts_recv BETWEEN $3 AND $4"
        )
        self._closed_positions = (
            f"SELECT {_POSITION_COLUMNS} FROM {s}.positions WHERE closed_ts < $1"
            " AND (closed_ts, account, id) > ($2, $3, $4) ORDER BY closed_ts, account, id"
            " LIMIT $5"
        )
        # Deletes closed positions ($1: accounts, $2: their ids) and keeps their ids, in
        # one statement; the number deleted.
        self._archive_positions = (
            f"WITH gone AS (DELETE FROM {s}.positions AS p USING unnest($1::text[], $2::text[])"
            " AS k (account, id) WHERE p.account = k.account AND p.id = k.id"
            " AND p.closed_ts IS NOT NULL RETURNING p.account, p.id)"
            f", kept AS (INSERT INTO {s}.archived_positions (account, id)"
            " SELECT account, id FROM gone ON CONFLICT DO NOTHING)"
            " SELECT count(*) FROM gone"
        )
        # Instruments the current pruning pass has not finished yet.
        self._prune_pass: deque[tuple[str, str]] = deque()
        self._open = False
        self._writes: set[asyncio.Task[None]] = set()
        self._writer = _Link(partial(self._connect_one, synchronous_commit="off"), self._timeout)
        self._durable_writer: Any = None
        """The writer's connection while its session has ``synchronous_commit`` on."""
        self._maintenance = _Link(
            partial(self._connect_one, synchronous_commit="off"), self._timeout
        )
        self._bbo_copy = BboCopyEncoder()

    @property
    def name(self) -> str:
        return "postgres"

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def application_name(self) -> str:
        """How the connection names itself in ``pg_stat_activity`` (PostgreSQL keeps the
        first 63 bytes)."""
        return f"marketcast {self._schema}"

    async def open(self) -> None:
        if self._open:
            raise StorageError(f"postgres schema {self._schema!r} is already open")
        self._open = True
        try:
            await self._run(self._writer, self._migrate)
        except BaseException:
            await self.close()
            raise

    def write_batch(self, batch: Batch, done: WriteDone) -> None:
        """The write runs as a task of its own; ``done`` is called in its last step, the
        one that got the commit's answer (``StorageBackend.write_batch``)."""
        if not self._open:
            raise BackendClosedError(f"postgres schema {self._schema!r} is not open")
        task = asyncio.get_running_loop().create_task(self._write_then(batch, done))
        self._writes.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._writes.discard)

    async def _write_then(self, batch: Batch, done: WriteDone) -> None:
        try:
            taken = await self._run(self._writer, lambda conn: self._write(conn, batch))
        except BaseException as error:  # cancelled too: the flusher keeps the rows
            done(error)
            if not isinstance(error, Exception):
                raise
            return
        done(taken)

    async def load_open_positions(self) -> list[PositionRow]:
        records = await self._run(self._writer, lambda conn: conn.fetch(self._select_open))
        return [_position(record) for record in records]

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
        """See ``BboHistoryReader``: a cursor on the (venue, symbol, ts_recv) index."""
        query = (self._history, venue, symbol, start_ns, end_ns, limit)
        async for page in self._cursor_pages(query, page_rows):
            yield page

    async def bbo_before(
        self, before_ns: int, *, page_rows: int = PAGE_ROWS
    ) -> AsyncGenerator[list[BboRow], None]:
        async for page in self._cursor_pages((self._old_bbo, before_ns), page_rows):
            yield page

    @property
    def prune_blocks_writes(self) -> bool:
        return False  # the maintenance connection runs it

    async def prune(self, before_ns: int, max_rows: int) -> int:
        """See ``PrunableBackend``: BBO rows one instrument after another (an index range
        each), feed events oldest first; the larger of the two counts deleted."""
        return int(
            await self._run(self._maintenance, lambda conn: self._prune(conn, before_ns, max_rows))
        )

    async def delete_bbo(self, venue: str, symbol: str, first_ns: int, last_ns: int) -> int:
        status = await self._run(
            self._maintenance,
            lambda conn: conn.execute(self._delete_bbo, venue, symbol, first_ns, last_ns),
        )
        return _deleted(status)

    async def closed_positions_before(
        self, before_ns: int, *, page_rows: int = PAGE_ROWS
    ) -> AsyncGenerator[list[PositionRow], None]:
        after: tuple[int, str, str] = (-1, "", "")
        while True:
            query = (self._closed_positions, before_ns, *after, page_rows)
            records = await self._run(self._maintenance, partial(_fetch, query))
            page = [_position(record) for record in records]
            if page:
                yield page
                last = page[-1]
                after = (last.closed_ts or 0, last.account, last.id)
            if len(page) < page_rows:
                return

    async def delete_positions(self, keys: Sequence[tuple[str, str]]) -> int:
        accounts = [account for account, _ in keys]
        ids = [position_id for _, position_id in keys]
        return int(
            await self._run(
                self._maintenance,
                lambda conn: conn.fetchval(self._archive_positions, accounts, ids),
            )
        )

    async def close(self) -> None:
        """Wait for the operations in progress, then close the connections."""
        if not self._open:
            return
        self._open = False
        await asyncio.gather(self._writer.close(), self._maintenance.close())

    async def _cursor_pages(
        self, query: tuple[Any, ...], page_rows: int
    ) -> AsyncGenerator[list[BboRow], None]:
        """The rows of ``query`` (SQL, then its arguments) through a cursor on a connection
        of its own, ``page_rows`` at a time."""
        if not self._open:
            raise BackendClosedError(f"postgres schema {self._schema!r} is not open")
        async with asyncio.timeout(self._timeout):
            conn = await self._connect_one()
        try:
            async with conn.transaction(readonly=True, isolation="repeatable_read"):
                page: list[BboRow] = []
                async for record in conn.cursor(*query, prefetch=page_rows):
                    page.append(_bbo(record))
                    if len(page) == page_rows:
                        yield page
                        page = []
                if page:
                    yield page
        finally:
            conn.terminate()  # nothing to finish: a read-only transaction

    async def _prune(self, conn: Any, before_ns: int, max_rows: int) -> int:
        if not self._prune_pass:
            self._prune_pass.extend(
                (r["venue"], r["symbol"]) for r in await conn.fetch(self._instruments)
            )
        async with conn.transaction():
            bbo = 0
            while self._prune_pass and bbo < max_rows:
                venue, symbol = self._prune_pass[0]
                wanted = max_rows - bbo
                deleted = _deleted(
                    await conn.execute(self._prune_bbo, venue, symbol, before_ns, wanted)
                )
                if deleted < wanted:
                    self._prune_pass.popleft()  # this instrument is done for this pass
                bbo += deleted
            feed_events = _deleted(await conn.execute(self._prune_feed_events, before_ns, max_rows))
        return max(bbo, feed_events)

    async def _run(self, link: _Link, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        if not self._open:
            raise BackendClosedError(f"postgres schema {self._schema!r} is not open")
        return await link.run(operation)

    async def _connect_one(self, **settings: str) -> Any:
        return await self._connect(
            self._dsn, server_settings={"application_name": self.application_name, **settings}
        )

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", _MIGRATION_LOCK + self._schema
            )
            # Only create a schema that is missing: CREATE needs a privilege that a role
            # limited to an existing schema does not have.
            if not await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", self._schema
            ):
                await conn.execute(f"CREATE SCHEMA {_quote_ident(self._schema)}")
            s = _quote_ident(self._schema)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.schema_version (version INTEGER PRIMARY KEY)"
            )
            current = await conn.fetchval(
                f"SELECT coalesce(max(version), 0) FROM {s}.schema_version"
            )
            if current > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"database schema version {current} is newer than {SCHEMA_VERSION}, "
                    "the newest this version of marketcast knows"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in self._migrations[version - 1]:
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES ($1)", version)

    async def _write(self, conn: Any, batch: Batch) -> frozenset[int]:
        taken: frozenset[int] = frozenset()
        # A batch holding positions is acknowledged on commit, so its commit waits for
        # the WAL flush (see the module docstring). The setting is the session's, changed
        # only when the kind of batch changes: a run of position batches costs no round
        # trip for it. A new connection starts with it off.
        durable = bool(batch.positions or batch.new_positions)
        if durable != (self._durable_writer is conn):
            await conn.execute(f"SET synchronous_commit TO {'on' if durable else 'off'}")
            self._durable_writer = conn if durable else None
        if batch.new_positions and not (batch.bbo or batch.positions or batch.feed_events):
            return await self._alone(conn, partial(self._insert_new, conn, batch.new_positions))
        if batch.bbo and not (batch.new_positions or batch.positions or batch.feed_events):
            await self._alone(conn, partial(self._copy_bbo, conn, batch.bbo))
            return frozenset()
        async with conn.transaction():
            if batch.bbo:
                await self._copy_bbo(conn, batch.bbo)
            if batch.new_positions:
                taken = await self._insert_new(conn, batch.new_positions)
            if batch.positions:
                await conn.executemany(
                    self._upsert_position, [_position_params(row) for row in batch.positions]
                )
            if batch.feed_events:
                await conn.copy_records_to_table(
                    "feed_events",
                    schema_name=self._schema,
                    columns=_FEED_EVENT_COLUMNS,
                    records=[_feed_event_record(row) for row in batch.feed_events],
                )
        return taken

    async def _alone(self, conn: Any, statement: Callable[[], Awaitable[_T]]) -> _T:
        """``statement`` (one SQL statement) without ``BEGIN`` and ``COMMIT``: it commits
        alone, atomically, in one round trip instead of three. A batch of new positions
        only (order entry's, a positions shard's: on the benchmark VM, 12 rows, p50 0.67
        against 0.97 ms, p99 1.1 against 1.5 ms) and a batch of BBO rows only (market
        data's, its ``COPY``) are written so. The read of skipped keys that may follow a
        positions insert saw other sessions' commits inside the transaction too (read
        committed); if that read fails, the retry finds the rows the insert stored and
        says ``WRITTEN`` for them, as for any batch retried after its commit.

        A statement cut short by the link's timeout gets a cancel request from asyncpg;
        the link drops the connection next, and a session dropped before the request
        reached the server would stay waiting on its locks. Awaiting the connection once
        more waits for that request (a transaction's rollback does the same)."""
        try:
            return await statement()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await conn.execute("SELECT 1")
            raise

    async def _copy_bbo(self, conn: Any, rows: Sequence[BboRow]) -> None:
        await conn.copy_to_table(
            "bbo",
            schema_name=self._schema,
            columns=BBO_COLUMNS,
            source=self._bbo_stream(rows),
            format="binary",
        )

    async def _insert_new(self, conn: Any, rows: list[PositionRow]) -> frozenset[int]:
        """Insert ``rows`` where their ids are free (in the caller's transaction); the
        indices of those whose id another position holds (``publish.storage.backend``).

        When every row went in (the status's count) they did so under keys of their own,
        and nothing is read back; otherwise every key is read back (the stored row says
        whether it is the new one), as on SQLite. Counting is cheaper than having the
        insert return each key (``RETURNING``: a record of two strings per position to
        decode on the event loop), and a batch of fresh ids, the usual one, reads nothing
        back."""
        columns = [list(column) for column in zip(*map(_position_params, rows), strict=True)]
        status = await conn.execute(self._insert_new_positions, *columns)
        if _inserted_count(status) == len(rows):
            return frozenset()
        inserted: frozenset[PositionKey] = frozenset()  # none known: the insert only counts
        stored: dict[PositionKey, PositionRow | None] = {}
        unsettled = unsettled_keys(rows, inserted)
        if unsettled:
            accounts = [account for account, _ in unsettled]
            ids = [position_id for _, position_id in unsettled]
            for record in await conn.fetch(self._stored_under, accounts, ids):
                key = (record["account"], record["id"])
                if record["archived"]:  # an archived id wins over a stored row
                    stored[key] = None
                else:
                    stored.setdefault(key, _position(record))
        return taken_new_positions(rows, inserted, stored)

    async def _bbo_stream(self, rows: Sequence[BboRow]) -> AsyncIterator[bytes]:
        """The rows as a binary ``COPY`` stream (``publish.storage.pgcopy``),
        ``_COPY_CHUNK_ROWS`` per chunk, with a yield to the loop between chunks."""
        encode = self._bbo_copy.rows
        data = HEADER
        for start in range(0, len(rows), _COPY_CHUNK_ROWS):
            if start:
                yield data
                data = b""
                await asyncio.sleep(0)  # let the loop serve others between chunks
            data += encode(rows[start : start + _COPY_CHUNK_ROWS])
        yield data + TRAILER


class _Link:
    """One connection, used by one operation at a time, (re)connected on demand."""

    def __init__(self, connect: Callable[[], Awaitable[Any]], timeout: float) -> None:
        self._connect = connect
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._conn: Any = None

    async def run(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        """``operation(connection)`` under the lock and the timeout, connecting first if
        needed; any failure closes the connection (see the module docstring)."""
        async with self._lock:
            try:
                # The outer timeout cuts short a cleanup that hangs after the inner one
                # fired: asyncpg's rollback of a statement the timeout cancelled first waits
                # for its cancel request, which a hung database never answers.
                async with asyncio.timeout(2 * self._timeout), asyncio.timeout(self._timeout):
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await self._connect()
                    return await operation(self._conn)
            except BaseException:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.terminate()
                raise

    async def close(self) -> None:
        """Wait for the operation in progress, then close the connection."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.close()
            except Exception:
                # A link that cannot close gracefully is dropped; nothing is pending on it.
                logger.warning("postgres: closing a connection failed", exc_info=True)
            finally:
                if not conn.is_closed():
                    conn.terminate()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _position_params(row: PositionRow) -> tuple[object, ...]:
    # Amounts as their exact decimal text, cast to NUMERIC by the statements: a Decimal
    # each and asyncpg's binary NUMERIC encoding of it cost about 2.5 µs more per row
    # on the event loop (50-row inserts on the 2-core dev box: ~7 against ~4.5 µs).
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


def _inserted_count(status: str) -> int:
    """The rows an ``INSERT`` put in, from its command status (``INSERT 0 <count>``)."""
    return int(status.rpartition(" ")[2])


def _feed_event_record(row: FeedEventRow) -> tuple[object, ...]:
    return (row.ts, row.venue, row.instrument, row.kind.value, row.detail)


async def _fetch(query: tuple[Any, ...], conn: Any) -> Any:
    return await conn.fetch(*query)


def _deleted(status: str) -> int:
    """The row count of a ``DELETE n`` command status."""
    return int(status.rpartition(" ")[2])


def _amount(value: Decimal | None) -> int | None:
    return None if value is None else from_decimal(value)


def _bbo(record: Any) -> BboRow:
    return BboRow(
        ts_event=record["ts_event"],
        ts_recv=record["ts_recv"],
        venue=record["venue"],
        symbol=record["symbol"],
        seq=record["seq"],
        bid_px=_amount(record["bid_px"]),
        bid_qty=_amount(record["bid_qty"]),
        ask_px=_amount(record["ask_px"]),
        ask_qty=_amount(record["ask_qty"]),
    )


def _position(record: Any) -> PositionRow:
    return PositionRow(
        id=record["id"],
        account=record["account"],
        instrument=record["instrument"],
        side=PositionSide(record["side"]),
        qty=from_decimal(record["qty"]),
        entry_price=from_decimal(record["entry_px"]),
        opened_ts=record["opened_ts"],
        closed_ts=record["closed_ts"],
    )
