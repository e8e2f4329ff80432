"""Position ids stay taken after ``marketcast archive`` moved their closed positions out:
on both backends, in one process, after a restart and through a positions shard's store,
and on a database created before archived ids were kept."""

from __future__ import annotations

import itertools
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from bus.positions import shard_of
from publish.storage import (
    Batch,
    StorageBackend,
    postgres,
    sqlite,
)
from publish.storage.archive import archive
from publish.storage.backend import written
from tests.postgres import pg_query
from tests.publish.storage.books import NOW, ORDER, book_on, refused_as_duplicate
from tests.publish.storage.support import Store, position

pytestmark = pytest.mark.timeout(60)


async def test_an_archived_positions_id_stays_taken(store: Store, tmp_path: Path) -> None:
    async with book_on(store) as (book, backend):
        opened = await book.open("acct-1", position_id="p-1", **ORDER)
        # Sending the very same open again is a retry: the same acknowledgement.
        assert await book.open("acct-1", position_id="p-1", **ORDER) == opened
        await book.close("acct-1", "p-1")
        await book.open("acct-1", position_id="p-2", **ORDER)
        report = await archive(backend, tmp_path / "archive", before_ns=NOW + 10**12)  # type: ignore[arg-type]
        assert report.positions == 1
        assert await store.read("SELECT id FROM {s}.positions") == [("p-2",)]

        await refused_as_duplicate(book, "acct-1", "p-1")
        await refused_as_duplicate(book, "acct-1", "p-2", qty="2")  # open: as before
        # Ids are per account: another account may use it.
        await book.open("acct-2", position_id="p-1", **ORDER)

    async with book_on(store) as (book, _):  # a restart
        await refused_as_duplicate(book, "acct-1", "p-1")
        assert [p.id for p in book.positions("acct-1")] == ["p-2"]


async def test_a_shard_refuses_an_archived_id(store: Store, tmp_path: Path) -> None:
    shards = 4
    account = next(f"acct-{n}" for n in itertools.count() if shard_of(f"acct-{n}", shards) == 0)
    async with book_on(store, shards=shards) as (book, backend):
        await book.open(account, position_id="p-1", **ORDER)
        await book.close(account, "p-1")
        await archive(backend, tmp_path / "archive", before_ns=NOW + 10**12)  # type: ignore[arg-type]
    async with book_on(store, shards=shards) as (book, _):
        await refused_as_duplicate(book, account, "p-1")


async def test_archiving_keeps_the_ids_of_what_it_deleted_only(
    store: Store, backend: StorageBackend, tmp_path: Path
) -> None:
    await written(
        backend,
        Batch(
            positions=[
                position("p-1", closed_ts=NOW),
                position("p-2"),
                position("p-3", closed_ts=NOW + 5),
            ]
        ),
    )
    await archive(backend, tmp_path / "archive", before_ns=NOW + 1)  # type: ignore[arg-type]
    assert await store.read("SELECT account, id FROM {s}.archived_positions") == [("acct-1", "p-1")]
    new = [
        position("p-1"),  # archived
        position("p-2"),  # stored and identical: that very position, written
        position("p-3"),  # closed
        position("p-4"),
        position("p-1", account="acct-2"),
    ]
    assert await written(backend, Batch(new_positions=new)) == frozenset({0, 2})
    assert await store.read("SELECT account, id FROM {s}.positions ORDER BY account, id") == [
        ("acct-1", "p-2"),
        ("acct-1", "p-3"),
        ("acct-1", "p-4"),
        ("acct-2", "p-1"),
    ]


async def create_first_schema(store: Store, tmp_path: Path) -> None:
    """The database as the version before archived ids were kept made it (schema 1),
    holding a closed and an open position."""
    rows = (
        "('p-1', 'acct-1', 'binance:BTC-USDT', 'buy', '0.5', '43000.1', 1, 2),"
        " ('p-2', 'acct-1', 'binance:BTC-USDT', 'buy', '0.5', '43000.1', 1, NULL)"
    )
    if store.kind == "sqlite":
        with closing(sqlite3.connect(tmp_path / "marketcast.db")) as conn, conn:
            for statement in sqlite._MIGRATIONS[0]:
                conn.execute(statement)
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
            conn.execute("INSERT INTO schema_version VALUES (1)")
            conn.execute(f"INSERT INTO positions VALUES {rows}")
        return
    s = f'"{store.schema}"'
    await pg_query(f"CREATE SCHEMA {s}")
    for statement in postgres._MIGRATIONS[0]:
        await pg_query(statement.format(s=s))
    await pg_query(f"CREATE TABLE {s}.schema_version (version INTEGER PRIMARY KEY)")
    await pg_query(f"INSERT INTO {s}.schema_version VALUES (1)")
    await pg_query(f"INSERT INTO {s}.positions VALUES {rows}")


async def test_a_database_of_the_previous_version_is_migrated(store: Store, tmp_path: Path) -> None:
    await create_first_schema(store, tmp_path)
    async with book_on(store) as (book, backend):
        assert [p.id for p in book.positions("acct-1")] == ["p-2"]
        assert await store.read("SELECT version FROM {s}.schema_version ORDER BY version") == [
            (1,),
            (2,),
        ]
        await archive(backend, tmp_path / "archive", before_ns=NOW)  # type: ignore[arg-type]
        assert await store.read("SELECT account, id FROM {s}.archived_positions") == [
            ("acct-1", "p-1")
        ]
        await refused_as_duplicate(book, "acct-1", "p-1")
