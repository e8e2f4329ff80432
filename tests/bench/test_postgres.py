"""The bench's PostgreSQL helpers against the real server: whether it answers, and
dropping the schemas a run made (and only those)."""

from __future__ import annotations

import asyncio
import socket

from bench.postgres import drop_schemas, postgres_reachable
from tests.postgres import PG_DSN, dsn_via, pg_query


def test_a_server_that_answers_is_reachable_and_a_closed_port_says_why_not() -> None:
    assert postgres_reachable(PG_DSN) is None
    with socket.socket() as sock:  # a port nothing listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    why = postgres_reachable(dsn_via(port))
    assert why is not None and why.startswith(f"cannot reach {dsn_via(port)}")


def test_drop_schemas_drops_the_ones_named_with_their_tables_and_no_other() -> None:
    names = ["marketcast_bench_test_a", "marketcast_bench_test_b", "marketcast_bench_test_kept"]

    async def run() -> list[tuple[object, ...]]:
        for name in names:
            await pg_query(f'CREATE SCHEMA IF NOT EXISTS "{name}"')
            await pg_query(f'CREATE TABLE IF NOT EXISTS "{name}".t (a int)')
        await drop_schemas(PG_DSN, [*names[:2], "marketcast_bench_test_never_made"])
        left = await pg_query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'marketcast_bench_test_%'"
        )
        await drop_schemas(PG_DSN, names[2:])
        return left

    assert asyncio.run(run()) == [("marketcast_bench_test_kept",)]
