"""The machine's PostgreSQL for tests: one fresh schema per test, dropped afterwards.

``MARKETCAST_TEST_PG_DSN`` overrides where it is (default: the local server, trust
auth, database ``test``); ``.ci/run`` makes sure it runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

PG_DSN = os.environ.get("MARKETCAST_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_ADDRESS = (urlsplit(PG_DSN).hostname or "127.0.0.1", urlsplit(PG_DSN).port or 5432)
"""Where the test PostgreSQL listens (for a proxy in front of it)."""


def dsn_via(port: int) -> str:
    """``PG_DSN`` pointed at ``127.0.0.1:port`` instead (a proxy in front of the server)."""
    parts = urlsplit(PG_DSN)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(
        parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}")
    )


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """The name of a schema no one else uses (not created yet); dropped with all its
    tables when the block ends."""
    name = f"marketcast_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()


async def pg_query(sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows read through a connection of our own, as another process would see them."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        return [tuple(record) for record in await conn.fetch(sql, *args)]
    finally:
        await conn.close()
