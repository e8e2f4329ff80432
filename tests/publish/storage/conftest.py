"""Fixtures of the tests that run on every backend: ``store`` (SQLite in a temporary file,
then the machine's PostgreSQL in a fresh schema) and ``backend`` (opened on it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from publish.storage import SqliteBackend, StorageBackend
from publish.storage.postgres import PostgresBackend
from tests.postgres import PG_DSN, fresh_schema, pg_query
from tests.publish.storage.support import Store, query


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        path = tmp_path / "marketcast.db"

        async def read_sqlite(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in query(path, sql.replace("{s}.", ""))]

        yield Store("sqlite", "", lambda: SqliteBackend(path), read_sqlite)
        return
    async with fresh_schema() as schema:

        async def read_postgres(sql: str) -> list[tuple[Any, ...]]:
            return await pg_query(sql.replace("{s}", f'"{schema}"'))

        yield Store(
            "postgres", schema, lambda: PostgresBackend(PG_DSN, schema=schema), read_postgres
        )


@pytest.fixture
async def backend(store: Store) -> AsyncIterator[StorageBackend]:
    backend = store.make()
    await backend.open()
    yield backend
    await backend.close()
