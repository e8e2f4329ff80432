"""What only the PostgreSQL backend does: COPY, NUMERIC columns, migration under a lock,
reconnecting after a lost connection, and timing out instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import asyncpg
import pytest

from book.fixed import to_decimal
from publish.storage import (
    BackendClosedError,
    Batch,
    InsertOutcome,
    SchemaVersionError,
    StorageFlusher,
    StorageHealth,
)
from publish.storage.backend import written
from publish.storage.postgres import Connector, PostgresBackend
from tests.postgres import PG_ADDRESS, PG_DSN, dsn_via, fresh_schema, pg_query
from tests.publish.storage.support import (
    RecordingBackend,
    add_new_position,
    add_position,
    bbo,
    feed_event,
    position,
    running,
)
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(30)


class CopyRecordingConnection(asyncpg.Connection):  # type: ignore[misc]
    """A real connection that also notes which bulk path each table was written by."""

    calls: list[tuple[str, str]]

    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str:
        self.calls.append(("copy_to_table", table_name))
        result: str = await super().copy_to_table(table_name, **kwargs)
        return result

    async def copy_records_to_table(self, table_name: str, **kwargs: Any) -> str:
        self.calls.append(("copy_records_to_table", table_name))
        result: str = await super().copy_records_to_table(table_name, **kwargs)
        return result

    async def executemany(self, command: str, args: Any, **kwargs: Any) -> None:
        self.calls.append(("executemany", command.split()[2]))
        await super().executemany(command, args, **kwargs)


def connecting(connection_class: type[asyncpg.Connection], **notes: list[Any]) -> Connector:
    """A backend's ``connect`` making real connections of ``connection_class`` that note
    into the lists ``notes`` names (set as attributes of each connection)."""

    async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn, connection_class=connection_class, **kwargs)
        for name, noted in notes.items():
            setattr(conn, name, noted)
        return conn

    return connect


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with fresh_schema() as name:
        yield name


async def terminate_backend_connections(backend: PostgresBackend) -> int:
    rows = await pg_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        backend.application_name,
    )
    return len(rows)


async def test_bbo_and_feed_events_go_in_by_copy_positions_by_upsert(schema: str) -> None:
    calls: list[tuple[str, str]] = []

    backend = PostgresBackend(
        PG_DSN, schema=schema, connect=connecting(CopyRecordingConnection, calls=calls)
    )
    await backend.open()
    try:
        rows = [bbo(seq) for seq in range(1, 301)]  # several COPY chunks
        await written(backend, Batch(bbo=rows, positions=[position()], feed_events=[feed_event(5)]))
    finally:
        await backend.close()
    assert calls == [
        ("copy_to_table", "bbo"),
        ("executemany", f'"{schema}".positions'),
        ("copy_records_to_table", "feed_events"),
    ]
    assert await pg_query(
        f'SELECT count(*), min(seq), max(seq), sum(bid_px) FROM "{schema}".bbo'
    ) == [(300, 1, 300, to_decimal(sum(row.bid_px or 0 for row in rows)))]
    # NUMERIC columns, not floating point.
    assert await pg_query(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = $1 AND data_type NOT IN ('text', 'bigint', 'integer')"
        " ORDER BY table_name, ordinal_position",
        schema,
    ) == [
        ("bbo", "bid_px", "numeric"),
        ("bbo", "bid_qty", "numeric"),
        ("bbo", "ask_px", "numeric"),
        ("bbo", "ask_qty", "numeric"),
        ("positions", "qty", "numeric"),
        ("positions", "entry_px", "numeric"),
    ]


class TransactionNotingConnection(CopyRecordingConnection):
    """Also notes, for each ``COPY`` into ``bbo``, whether it ran inside a transaction."""

    in_transaction: list[bool]

    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str:
        self.in_transaction.append(self.is_in_transaction())
        return await super().copy_to_table(table_name, **kwargs)


async def test_a_batch_of_bbo_rows_only_is_one_copy_that_commits_alone(schema: str) -> None:
    # One statement is atomic by itself: BEGIN and COMMIT around it would only add two
    # round trips to every market-data flush.
    calls: list[tuple[str, str]] = []
    in_transaction: list[bool] = []

    connect = connecting(TransactionNotingConnection, calls=calls, in_transaction=in_transaction)
    backend = PostgresBackend(PG_DSN, schema=schema, connect=connect)
    await backend.open()
    try:
        await written(backend, Batch(bbo=[bbo(seq) for seq in range(1, 301)]))  # chunks
        await written(backend, Batch(bbo=[bbo(301)], feed_events=[feed_event(5)]))
        taken = await written(backend, Batch(bbo=[bbo(302)], new_positions=[position("p-1")]))
    finally:
        await backend.close()
    assert in_transaction == [False, True, True]
    assert calls == [
        ("copy_to_table", "bbo"),
        ("copy_to_table", "bbo"),
        ("copy_records_to_table", "feed_events"),
        ("copy_to_table", "bbo"),
    ]
    assert taken == frozenset()
    assert await pg_query(f'SELECT count(*), min(seq), max(seq) FROM "{schema}".bbo') == [
        (302, 1, 302)
    ]
    assert await pg_query(f'SELECT id FROM "{schema}".positions') == [("p-1",)]


class CommitSettingConnection(asyncpg.Connection):  # type: ignore[misc]
    """A real connection that notes its ``SET synchronous_commit`` statements and the
    setting each transaction, or each ``INSERT`` or ``COPY`` run alone (a batch of new
    positions only, or of BBO rows only), runs (and so commits) with."""

    sets: list[str]
    commits: list[str]

    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str:
        if not self.is_in_transaction():
            self.commits.append(await self.fetchval("SELECT current_setting('synchronous_commit')"))
        result: str = await super().copy_to_table(table_name, **kwargs)
        return result

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        if query.startswith("SET synchronous_commit"):
            self.sets.append(query.rsplit(" ", 1)[1])
        elif query.startswith("INSERT") and not self.is_in_transaction():
            self.commits.append(await self.fetchval("SELECT current_setting('synchronous_commit')"))
        result: str = await super().execute(query, *args, **kwargs)
        return result

    def transaction(self, **kwargs: Any) -> Any:
        connection, transaction = self, super().transaction(**kwargs)

        class Noted:
            async def __aenter__(self) -> None:
                await transaction.__aenter__()
                connection.commits.append(
                    await connection.fetchval("SELECT current_setting('synchronous_commit')")
                )

            async def __aexit__(self, *exc: Any) -> None:
                await transaction.__aexit__(*exc)

        return Noted()


async def test_only_batches_holding_positions_wait_for_the_wal_flush(schema: str) -> None:
    sets: list[str] = []
    commits: list[str] = []

    connect = connecting(CommitSettingConnection, sets=sets, commits=commits)
    backend = PostgresBackend(PG_DSN, schema=schema, connect=connect)
    await backend.open()
    commits.clear()  # the migration's
    try:
        await written(backend, Batch(new_positions=[position("p-1")]))
        await written(backend, Batch(new_positions=[position("p-2")]))
        await written(backend, Batch(bbo=[bbo(1)]))
        await written(backend, Batch(bbo=[bbo(2)], feed_events=[feed_event(3)]))
        await written(backend, Batch(bbo=[bbo(4)], positions=[position("p-1", closed_ts=9)]))
        assert await terminate_backend_connections(backend) == 1
        for _ in range(2):
            # The first write may find the connection gone, failing in whichever way the
            # kill reached asyncpg (the flusher would retry it); the link then connects
            # again, and the new session starts with the setting off.
            with contextlib.suppress(Exception):
                await written(backend, Batch(new_positions=[position("p-3")]))
    finally:
        await backend.close()
    commits_after_reconnect = commits[5:]
    assert commits[:5] == ["on", "on", "off", "off", "on"]
    assert commits_after_reconnect and set(commits_after_reconnect) == {"on"}
    # The session's setting changes only when the kind of batch does, and once on the
    # new connection: a run of position batches costs no round trip for it.
    assert sets == ["on", "off", "on", "on"]
    assert await pg_query(f'SELECT id, closed_ts FROM "{schema}".positions ORDER BY id') == [
        ("p-1", 9),
        ("p-2", None),
        ("p-3", None),
    ]


async def test_backends_opening_one_new_schema_at_once_migrate_it_once(schema: str) -> None:
    backends = [PostgresBackend(PG_DSN, schema=schema) for _ in range(3)]
    await asyncio.gather(*(backend.open() for backend in backends))
    try:
        assert await pg_query(
            f'SELECT version FROM "{schema}".schema_version ORDER BY version'
        ) == [(1,), (2,)]
        await written(backends[0], Batch(positions=[position()]))
        assert await backends[2].load_open_positions() == [position()]
    finally:
        await asyncio.gather(*(backend.close() for backend in backends))


async def test_a_newer_schema_is_refused(schema: str) -> None:
    await pg_query(f'CREATE SCHEMA "{schema}"')
    await pg_query(f'CREATE TABLE "{schema}".schema_version (version INTEGER PRIMARY KEY)')
    await pg_query(f'INSERT INTO "{schema}".schema_version VALUES (3)')
    backend = PostgresBackend(PG_DSN, schema=schema)
    with pytest.raises(SchemaVersionError, match="version 3 is newer than 2"):
        await backend.open()
    with pytest.raises(BackendClosedError):
        await written(backend, Batch(bbo=[bbo(1)]))
    assert await pg_query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    ) == [("schema_version",)]


async def test_a_lost_connection_is_replaced(schema: str) -> None:
    backend = PostgresBackend(PG_DSN, schema=schema)
    await backend.open()
    recording = RecordingBackend(backend)
    flusher = StorageFlusher(recording, window_ms=1, retry_initial_ms=1, retry_max_ms=10)
    try:
        async with running(flusher):
            await add_position(flusher, position("p-1"))
            assert await terminate_backend_connections(backend) == 1
            ack = add_position(flusher, position("p-2"))
            flusher.add_bbo(bbo(1))
            await ack
    finally:
        await backend.close()
    written = Batch(bbo=[bbo(1)], positions=[position("p-2")])
    # Whether the write found the connection already closed (and reconnected first)
    # or lost it midway (and was retried) depends on when the server's close arrived.
    assert recording.failed in ([], [written])
    assert recording.committed == [Batch(positions=[position("p-1")]), written]
    assert flusher.health is StorageHealth.HEALTHY
    assert await pg_query(f'SELECT id FROM "{schema}".positions ORDER BY id') == [
        ("p-1",),
        ("p-2",),
    ]


@pytest.mark.parametrize(
    "kind",
    ["changed", "new", "bbo"],
    # A batch of new positions only, or of BBO rows only, is one statement without a
    # transaction: its timeout must still stop its server session from waiting on the lock.
    ids=["changed-position-in-a-transaction", "new-position-alone", "bbo-copy-alone"],
)
async def test_a_write_that_hangs_times_out_and_is_retried(schema: str, kind: str) -> None:
    backend = PostgresBackend(PG_DSN, schema=schema, timeout_ms=200)
    await backend.open()
    recording = RecordingBackend(backend)
    flusher = StorageFlusher(recording, window_ms=1, retry_initial_ms=1, retry_max_ms=10)
    locker = await asyncpg.connect(PG_DSN)
    table = "bbo" if kind == "bbo" else "positions"
    try:
        async with running(flusher):
            # Another session holds the table: the write waits on its lock.
            locker_tx = locker.transaction()
            await locker_tx.start()
            await locker.execute(f'LOCK TABLE "{schema}".{table} IN ACCESS EXCLUSIVE MODE')
            if kind == "bbo":
                flusher.add_bbo(bbo(1))
                ack = None
            else:
                ack = (add_new_position if kind == "new" else add_position)(flusher, position())
            await recording.wait_for(lambda: len(recording.failed) >= 3)
            assert flusher.health is StorageHealth.DEGRADED
            assert ack is None or not ack.done()
            # Each timed-out write dropped its connection instead of leaving it waiting.
            assert await pg_query(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                backend.application_name,
            ) in ([(0,)], [(1,)])
            await locker_tx.rollback()
            if ack is not None:
                assert await ack is (InsertOutcome.WRITTEN if kind == "new" else None)
            await recording.wait_for(lambda: bool(recording.committed))
    finally:
        await locker.close()
        await backend.close()
    batch = {
        "changed": Batch(positions=[position()]),
        "new": Batch(new_positions=[position()]),
        "bbo": Batch(bbo=[bbo(1)]),
    }[kind]
    assert recording.failed == [batch] * len(recording.failed)
    assert recording.committed == [batch]
    if kind == "bbo":
        assert await pg_query(f'SELECT seq FROM "{schema}".bbo') == [(1,)]
    else:
        assert await pg_query(f'SELECT id, account FROM "{schema}".positions') == [
            ("p-1", "acct-1")
        ]


async def test_a_write_cut_short_while_its_database_hangs_fails_in_twice_its_timeout(
    schema: str,
) -> None:
    async with TcpProxy(*PG_ADDRESS) as proxy:
        backend = PostgresBackend(dsn_via(proxy.port), schema=schema, timeout_ms=300)
        await backend.open()
        locker = await asyncpg.connect(PG_DSN)
        locker_tx = locker.transaction()
        try:
            await locker_tx.start()
            await locker.execute(f'LOCK TABLE "{schema}".positions IN ACCESS EXCLUSIVE MODE')
            write = asyncio.create_task(written(backend, Batch(positions=[position()])))
            await asyncio.sleep(0.1)  # its transaction is open, its upsert waits on the lock
            # Now the database hangs: when the timeout cuts the upsert short, asyncpg's
            # cancel request and the transaction's rollback get no answer either.
            proxy.pause()
            await asyncio.wait({write}, timeout=5)
            assert write.done(), "the write hung past its timeout"
            assert isinstance(write.exception(), TimeoutError)
        finally:
            proxy.restore()
            await locker_tx.rollback()
            await locker.close()
            await backend.close()


async def test_an_unreachable_database_fails_open_within_the_timeout(schema: str) -> None:
    # A listening socket that never answers the startup message.
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _, writer: accepted.append(writer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = PostgresBackend(
        f"postgresql://postgres@127.0.0.1:{port}/test", schema=schema, timeout_ms=200
    )
    try:
        with pytest.raises(TimeoutError):
            await backend.open()
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    with pytest.raises(BackendClosedError):
        await written(backend, Batch(bbo=[bbo(1)]))


@pytest.mark.parametrize("kwargs", [{"schema": ""}, {"timeout_ms": 0}])
def test_invalid_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        partial(PostgresBackend, PG_DSN)(**kwargs)
