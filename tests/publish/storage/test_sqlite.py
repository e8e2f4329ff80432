"""What only the SQLite backend does; what every backend does is in test_backends.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from publish.position import PositionSide
from publish.storage import (
    BackendClosedError,
    Batch,
    SchemaVersionError,
    SqliteBackend,
)
from publish.storage import wal as wal_module
from publish.storage.backend import written
from tests.publish.storage.support import bbo, position, query

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "marketcast.db"


@pytest.fixture
async def backend(db_path: Path) -> AsyncIterator[SqliteBackend]:
    backend = SqliteBackend(db_path)
    await backend.open()
    yield backend
    await backend.close()


async def test_open_creates_the_tables_and_indexes_in_wal_mode(
    backend: SqliteBackend, db_path: Path
) -> None:
    assert query(
        db_path,
        "SELECT type, name, tbl_name FROM sqlite_master"
        " WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
    ) == [
        ("table", "archived_positions", "archived_positions"),
        ("table", "bbo", "bbo"),
        ("index", "bbo_venue_symbol_ts", "bbo"),
        ("table", "feed_events", "feed_events"),
        ("index", "feed_events_venue_ts", "feed_events"),
        ("table", "positions", "positions"),
        ("index", "positions_open", "positions"),
        ("table", "schema_version", "schema_version"),
    ]
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO schema_version VALUES (3)")
    backend = SqliteBackend(db_path)
    with pytest.raises(SchemaVersionError, match="version 3 is newer than 2"):
        await backend.open()
    with pytest.raises(BackendClosedError):
        await written(backend, Batch(bbo=[bbo(1)]))
    assert query(db_path, "SELECT name FROM sqlite_master WHERE name = 'bbo'") == []


async def test_the_wal_shrinks_once_a_long_reader_ends(db_path: Path) -> None:
    limit = 64 << 10
    backend = SqliteBackend(db_path, journal_size_limit=limit)
    await backend.open()
    try:
        await written(backend, Batch(bbo=[bbo(0)]))
        with closing(sqlite3.connect(db_path, isolation_level=None)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM bbo").fetchone()  # holds its snapshot
            for start in range(1, 20_001, 500):
                await written(backend, Batch(bbo=[bbo(seq) for seq in range(start, start + 500)]))
            grown = backend.wal_bytes()
            assert grown > 1 << 20, "a reader's snapshot keeps the WAL from being reused"
            reader.execute("COMMIT")
        seq = 20_001
        while seq < 21_001 and backend.wal_bytes() > limit:
            await written(backend, Batch(bbo=[bbo(seq)]))
            seq += 1
            await asyncio.sleep(0.005)  # lets the checkpoint thread catch up
        assert backend.wal_bytes() <= limit, f"the WAL stayed at {backend.wal_bytes()} bytes"
        assert query(db_path, "SELECT count(*) FROM bbo") == [(seq,)]
    finally:
        await backend.close()


async def test_wal_bytes_is_the_wal_files_size(db_path: Path, backend: SqliteBackend) -> None:
    await written(backend, Batch(bbo=[bbo(1)]))
    assert backend.wal_bytes() == (db_path.parent / (db_path.name + "-wal")).stat().st_size
    assert SqliteBackend(db_path.parent / "none.db").wal_bytes() == 0


async def test_checkpoints_start_at_most_once_per_interval(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1000.0
    monkeypatch.setattr(wal_module.time, "monotonic", lambda: now)
    backend = SqliteBackend(db_path)
    started: list[float] = []
    checkpoint = backend.checkpointer.checkpoint_sync

    def counted() -> None:
        started.append(now)
        checkpoint()

    monkeypatch.setattr(backend.checkpointer, "checkpoint_sync", counted)
    await backend.open()
    try:
        for seq in range(20):  # commits within one interval: one checkpoint
            await written(backend, Batch(bbo=[bbo(seq)]))
        running = backend.checkpointer.running
        assert running is not None
        # A checkpoint still running also defers the next (not what this test is about):
        # on a busy machine the first can outlast the commits below.
        await asyncio.wrap_future(running)
        now += wal_module.CHECKPOINT_INTERVAL
        for seq in range(20, 40):
            await written(backend, Batch(bbo=[bbo(seq)]))
    finally:
        await backend.close()
    assert started == [1000.0, 1000.0 + wal_module.CHECKPOINT_INTERVAL]


async def test_a_checkpoint_starts_after_checkpoint_rows_without_waiting_for_the_interval(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal_module.time, "monotonic", lambda: 1000.0)  # time stands still
    backend = SqliteBackend(db_path)
    started: list[int] = []
    checkpoint = backend.checkpointer.checkpoint_sync

    def counted() -> None:
        started.append(len(started))
        checkpoint()

    monkeypatch.setattr(backend.checkpointer, "checkpoint_sync", counted)
    await backend.open()
    try:
        await written(backend, Batch(bbo=[bbo(0)]))  # the first: no checkpoint yet
        first = backend.checkpointer.running
        assert first is not None
        await asyncio.wrap_future(first)
        rows = wal_module.CHECKPOINT_ROWS
        await written(backend, Batch(bbo=[bbo(seq) for seq in range(1, rows)]))
        assert backend.checkpointer.running is first, "fewer rows: no checkpoint"
        await written(backend, Batch(bbo=[bbo(rows)]))  # the rows reach the bound
        assert backend.checkpointer.running is not first
    finally:
        await backend.close()
    assert started == [0, 1]


async def statements_of(backend: SqliteBackend, batch: Batch) -> list[str]:
    """The SQL statements the writer ran for ``batch`` (its connection's trace)."""
    statements: list[str] = []

    def trace(on: bool) -> None:
        backend._connection().set_trace_callback(statements.append if on else None)

    await backend._call(lambda: trace(True))
    try:
        await written(backend, batch)
    finally:
        await backend._call(lambda: trace(False))
    return [" ".join(statement.split()[:2]) for statement in statements]


async def test_a_batch_of_new_positions_alone_is_one_insert_without_a_transaction_around_it(
    backend: SqliteBackend, db_path: Path
) -> None:
    # One statement is atomic by itself: BEGIN IMMEDIATE and COMMIT would only cost the
    # writer thread two more round trips for the GIL.
    rows = [position(f"p{n}") for n in range(3)]
    assert await statements_of(backend, Batch(new_positions=rows)) == ["INSERT INTO"]
    assert query(db_path, "SELECT id FROM positions ORDER BY id") == [("p0",), ("p1",), ("p2",)]
    mixed = await statements_of(backend, Batch(bbo=[bbo(1)], new_positions=[position("p3")]))
    assert mixed[0] == "BEGIN IMMEDIATE" and mixed[-1] == "COMMIT"


async def test_new_positions_of_any_value_are_read_back_exactly_and_up_to_1024_are_one_insert(
    backend: SqliteBackend, db_path: Path
) -> None:
    # The rows travel to SQLite as bound parameters: every value must come back as
    # written, whatever its text or size. 1,003 rows are one statement (padded to 1,024
    # with copies of the last row, which change nothing); 1,500 are two, in a transaction.
    odd = [
        replace(
            position("ünïcödé-ид-📈", account="acct-é"), qty=1, entry_price=10**18 * 10**12 - 1
        ),
        replace(position('quote"back\\slash'), side=PositionSide.SELL, opened_ts=2**63 - 1),
        position("closed-at-once", closed_ts=1_700_000_000_000_000_001),
    ]
    many = [position(f"p{n:04d}") for n in range(1_000)]
    assert await statements_of(backend, Batch(new_positions=odd + many)) == ["INSERT INTO"]
    stored = {(row.account, row.id): row for row in await backend.load_open_positions()}
    assert len(stored) == len(odd) + len(many) - 1  # the closed one is not open
    for row in odd[:2] + many:
        assert stored[row.account, row.id] == row
    closed = "SELECT id, account, closed_ts FROM positions WHERE closed_ts IS NOT NULL"
    assert query(db_path, closed) == [("closed-at-once", "acct-1", 1_700_000_000_000_000_001)]
    more = [position(f"q{n:04d}") for n in range(1_500)]
    statements = await statements_of(backend, Batch(new_positions=more))
    assert statements == ["BEGIN IMMEDIATE", "INSERT INTO", "INSERT INTO", "COMMIT"]
    assert query(db_path, "SELECT count(*) FROM positions") == [(len(odd) + 1_000 + 1_500,)]


@pytest.mark.parametrize("count", [3, 64, 65, 100, 1_024])
async def test_a_padded_insert_reports_exactly_the_taken_ids_whatever_the_last_row(
    backend: SqliteBackend, db_path: Path, count: int
) -> None:
    """The copies that pad an ``INSERT`` past 64 rows are of its last row: whether that
    row goes in or is refused (an id taken by another order, or archived), the copies
    neither store anything nor count."""
    taken_by_other = position("last")
    archived = position("archived", closed_ts=1_700_000_000_000_000_001)
    await written(backend, Batch(new_positions=[taken_by_other, archived]))
    assert await backend.delete_positions([(archived.account, archived.id)]) == 1
    rows = [position(f"p{n:04d}") for n in range(count - 1)]
    lasts = (replace(taken_by_other, qty=7), replace(archived, closed_ts=None), position("fresh"))
    for last in lasts:
        taken = await written(backend, Batch(new_positions=[*rows, last]))
        assert taken == (set() if last.id == "fresh" else {count - 1})
        rows = [replace(row, id=f"{row.id}-again") for row in rows]
    ids = {row[0] for row in query(db_path, "SELECT id FROM positions")}
    assert len(ids) == 1 + 3 * (count - 1) + 1
    assert "fresh" in ids and "archived" not in ids
    stored = [row for row in await backend.load_open_positions() if row.id == "last"]
    assert stored == [taken_by_other]
