"""Scenario 6 at a tiny size: marketcast on SQLite and PostgreSQL, the websocket floor and
the bare storage floors, all up the same ramp; and the parts one by one (real servers,
real clients, real databases), down to a refusal being counted."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from bench.agent import AgentError
from bench.orderclients import OrderClientPool, OrderPoolSpec, OrderWindow
from bench.orders import Contender, OrdersOptions, OrderTrial, limit_reason, run
from bench.orderservers import OrderServerKind, OrderServerProcess, OrderServerSpec
from bench.positionfloor import FloorSpec, PositionParams, RowSource, StorageFloorProcess, trial
from bench.ramp import RepeatedStep
from bench.report import Progress, latency_histogram
from publish.auth import TokenAuthority
from publish.metrics.cpu import CpuTimes
from publish.metrics.hdr import Summary
from tests.postgres import PG_DSN, pg_query

INSTRUMENTS = ("bench:SYM0000-USD", "bench:SYM0001-USD")


def auth_requests(secret: str, accounts: int) -> tuple[bytes, ...]:
    tokens = TokenAuthority(secret.encode())
    return tuple(
        orjson.dumps({"op": "auth", "id": 0, "token": tokens.issue(f"acct-{i:05d}", ttl=600)})
        for i in range(accounts)
    )


def one_window(
    server: OrderServerProcess, pool: OrderClientPool, rate: float
) -> tuple[OrderWindow, CpuTimes]:
    pool.drive(rate)
    try:
        server.window()
        pool.window()
        asyncio.run(asyncio.sleep(0.4))
        window = pool.measure()
        cpu = server.measure()
    finally:
        pool.halt()
    return window, cpu


@pytest.mark.parametrize("kind", list(OrderServerKind))
def test_clients_get_an_ack_for_every_open_they_send(kind: OrderServerKind) -> None:
    secret = os.urandom(16).hex()
    spec = OrderServerSpec(kind, instruments=INSTRUMENTS, connections=3, secret=secret)
    with OrderServerProcess(spec) as server, OrderClientPool() as pool:
        assert pool.connect(OrderPoolSpec(server.url, auth_requests(secret, 3), INSTRUMENTS)) == 3
        window, cpu = one_window(server, pool, 100.0)
    assert window.sent > 0 and window.acked > 0
    assert window.errors == {} and window.closed == 0
    assert window.latency.get_total_count() == window.acked
    # The event loop's thread is one of the process's: it used some, never more.
    assert 0 < cpu.event_loop <= cpu.process


def test_a_refused_open_is_counted_by_its_code() -> None:
    secret = os.urandom(16).hex()
    spec = OrderServerSpec(
        OrderServerKind.MARKETCAST,
        instruments=INSTRUMENTS,
        connections=1,
        secret=secret,
        max_per_account=1,
    )
    with OrderServerProcess(spec) as server, OrderClientPool() as pool:
        pool.connect(OrderPoolSpec(server.url, auth_requests(secret, 1), INSTRUMENTS))
        pool.drive(50.0)
        asyncio.run(asyncio.sleep(0.2))  # the account's one position is taken by now
        pool.halt()
        window, _ = one_window(server, pool, 50.0)
    assert window.acked == 0
    assert window.errors.get("too_many_positions", 0) > 0


def test_a_bad_token_stops_the_clients_from_connecting() -> None:
    spec = OrderServerSpec(
        OrderServerKind.MARKETCAST, instruments=INSTRUMENTS, connections=1, secret="s" * 32
    )
    with (
        OrderServerProcess(spec) as server,
        OrderClientPool() as pool,
        pytest.raises(AgentError, match="auth refused"),
    ):
        pool.connect(OrderPoolSpec(server.url, auth_requests("t" * 32, 1), INSTRUMENTS))


def test_the_postgres_storage_floor_commits_position_rows() -> None:
    schema = f"marketcast_test_orders_{os.getpid()}"
    spec = FloorSpec("postgres", 3, INSTRUMENTS, dsn=PG_DSN, schema=schema)
    try:
        with StorageFloorProcess(spec) as floor:
            trial = floor.trial(500.0, 0.1, 0.3)
        assert trial.added > 0 and trial.committed > 0
        assert trial.latency.get_total_count() == trial.committed
        (count,) = asyncio.run(pg_query(f'SELECT count(*) FROM "{schema}".positions'))
        assert count[0] >= trial.committed
    finally:
        asyncio.run(pg_query(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def test_the_sqlite_storage_floor_checkpoints_as_the_backend_does(tmp_path: Path) -> None:
    # Auto-checkpoint is off in the floor, as in the backend: rows reach the database
    # file (read here without its WAL) only through the checkpoint thread.
    path = tmp_path / "floor.db"
    with StorageFloorProcess(FloorSpec("sqlite", 3, INSTRUMENTS, path=str(path))) as floor:
        trial = floor.trial(2_000.0, 0.1, 0.5)
        assert trial.committed > 0
        with closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as file_only:
            (in_file,) = file_only.execute("SELECT count(*) FROM positions").fetchone()
    assert in_file > 0


def test_order_entry_runs_every_contender_up_the_ramp() -> None:
    options = OrdersOptions(
        rates=(100,),
        connections=4,
        instruments=2,
        warmup=0.1,
        seconds=0.3,
        repeats=2,
        pg_dsn=PG_DSN,
    )
    result = run(options, Progress())

    steps, headline = result.tables
    climbed: dict[str, list[str]] = {}
    for row in steps.rows:
        climbed.setdefault(row[0], []).append(row[1])
        assert row[3] != "0"  # acks (or committed rows) came back
    assert list(climbed) == [str(contender) for contender in Contender]
    assert all(rates == ["100"] for rates in climbed.values())
    assert [row[0] for row in headline.rows] == ["sqlite", "postgres"]
    assert all(row[3] != "-" for row in headline.rows)  # through an edge too
    shards = [row[11] for row in steps.rows if row[0].startswith("edge -> positions shard")]
    assert len(shards) == 2 and "-" not in shards  # the shard's CPU is measured
    # Every websocket server's event loop thread is read beside its process; the storage
    # floors have no loop serving connections.
    for row in steps.rows:
        storage_floor = row[0].startswith("bare ")
        assert ("(loop " in row[10]) is not storage_floor, row
    # marketcast's own time per op is read from its position_op stage (an edge's too),
    # the floors and the lean server keep none; the shard's own time is read beside the
    # edge's, and only there.
    inside = {row[0]: row[6] for row in steps.rows}
    in_shard = {row[0]: row[7] for row in steps.rows}
    for contender in Contender:
        if contender.name.endswith("FLOOR") or contender is Contender.LEAN_SQLITE:
            assert inside[contender] == "-"
        else:
            p50, p99 = map(float, inside[contender].split(" / "))
            assert 0 < p50 <= p99 < 10_000, (contender, inside[contender])
        if contender.name.startswith("EDGE"):
            p50, p99 = map(float, in_shard[contender].split(" / "))
            assert 0 < p50 <= p99 < 10_000, (contender, in_shard[contender])
        else:
            assert in_shard[contender] == "-"
    for backend in ("sqlite", "postgres"):
        # At its best step the server's own part is a figure too (a loaded machine may
        # leave a backend with no step sustained, and then no best step).
        if result.figures[f"{backend}_sustained_acks_per_s"] > 0:
            assert result.figures[f"{backend}_server_op_p99_ms"] > 0
        else:
            assert f"{backend}_server_op_p99_ms" not in result.figures
        assert f"{backend}_shard_op_p99_ms" not in result.figures  # one process: no shard
        if result.figures[f"{backend}_edge_shard_sustained_acks_per_s"] > 0:
            # Through an edge, the shard's own part is a figure beside the edge's.
            assert result.figures[f"{backend}_edge_shard_shard_op_p99_ms"] > 0
        else:
            assert f"{backend}_edge_shard_shard_op_p99_ms" not in result.figures
    assert [target.what.split(":")[0] for target in result.targets][:1] == ["sqlite"]
    assert any(note.startswith("reference: the lean Python server") for note in result.notes)
    if result.figures["sqlite_sustained_acks_per_s"] > 0:
        # Both climbed the same ramp, so the lean server was measured at marketcast's best
        # step too; an open costs each loop some CPU.
        assert result.figures["sqlite_loop_us_per_open"] > 0
        assert result.figures["lean_sqlite_loop_us_per_open"] > 0
    assert {
        "lean_sqlite_sustained_acks_per_s",
        "sqlite_sustained_acks_per_s",
        "postgres_sustained_acks_per_s",
        "sqlite_edge_shard_sustained_acks_per_s",
        "postgres_edge_shard_sustained_acks_per_s",
    } <= set(result.figures)
    leftovers = asyncio.run(
        pg_query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            f"marketcast_bench_orders_{os.getpid()}_%",
        )
    )
    assert leftovers == []


def made(
    offered: float,
    delivered: float,
    *,
    p99_ms: float = 1.0,
    server: float = 0.5,
    client: float = 0.5,
    shard: float = math.nan,
    errors: dict[str, int] | None = None,
    server_loop: float = math.nan,
    shard_loop: float = math.nan,
) -> OrderTrial:
    latency = latency_histogram()
    latency.record_value(int(p99_ms * 1e6))
    return OrderTrial(
        offered,
        delivered,
        latency,
        errors or {},
        0,
        server,
        client,
        shard,
        server_loop_cpu=server_loop,
        shard_loop_cpu=shard_loop,
    )


@pytest.mark.parametrize(
    ("trial", "reason"),
    [
        (made(1000, 1000, errors={"storage_unavailable": 3}), "requests refused"),
        (made(800, 800, client=0.99), "could not offer the rate (its process at 99%"),
        (made(800, 800, client=math.nan, server=0.7), "its process at 70%"),
        (made(1000, 700, server=0.97), "server process is CPU-bound (97%"),
        (made(1000, 700, client=0.95), "client process is CPU-bound (95%"),
        (made(1000, 700, shard=0.96), "positions shard process is CPU-bound (96%"),
        (made(1000, 1000, p99_ms=30, server=0.4), "latency (p99 30 ms, 100% acked)"),
        (
            made(1000, 700, server=1.06, server_loop=0.93),
            "server's event loop is CPU-bound (its thread at 93% of a core, the process at 106%)",
        ),
        (
            made(1000, 700, shard=1.2, shard_loop=0.95),
            "positions shard's event loop is CPU-bound (its thread at 95%",
        ),
        # A process past a core whose loop has time to spare is not the limit: its other
        # threads run beside the loop, on the machine's other cores.
        (
            made(1000, 1000, p99_ms=16, server=1.06, server_loop=0.68),
            "server's event loop at 68% of a core (the process at 106%): its loop is not "
            "saturated; its other threads (storage) use 38% of a core beside it",
        ),
        (
            made(1000, 1000, p99_ms=12, server=0.6, server_loop=0.5, shard=1.1, shard_loop=0.7),
            "latency (p99 12 ms, 100% acked)",
        ),
        # An edge waits for its shard: the bus both ways and the shard's commit.
        (
            made(1000, 1000, p99_ms=11, server=0.13, server_loop=0.13, shard=0.2, shard_loop=0.15),
            "(the round trip over the bus to the positions shard, and the shard's commit)",
        ),
    ],
)
def test_what_limits_a_step_is_named(trial: OrderTrial, reason: str) -> None:
    assert reason in limit_reason(RepeatedStep(1000, [trial]))


def ms_summary(p50_ms: float, p99_ms: float) -> Summary:
    p50, p99 = int(p50_ms * 1e6), int(p99_ms * 1e6)
    return Summary(count=100, total=100 * p50, p50=p50, p90=p99, p99=p99, p999=p99, max=p99)


def test_an_edges_limit_names_its_shards_own_part_beside_its_own() -> None:
    edge = dataclasses.replace(
        made(1000, 1000, p99_ms=11, server=0.13, server_loop=0.13, shard=0.2, shard_loop=0.15),
        server_op=ms_summary(6.5, 10.4),
        shard_op=ms_summary(5.2, 7.3),
    )
    reason = limit_reason(RepeatedStep(1000, [edge]))
    assert reason.endswith(
        "the server's own part (op submitted -> ack queued) had a p99 of 10.4 ms, the "
        "shard's (op in from the bus -> answer published) 7.3 ms: the rest is the bus both "
        "ways and the edge's own turns"
    )
    # One process has no shard: its reason ends at its own part.
    alone = dataclasses.replace(edge, shard_cpu=math.nan, shard_loop_cpu=math.nan, shard_op=None)
    assert limit_reason(RepeatedStep(1000, [alone])).endswith("had a p99 of 10.4 ms")


def test_a_contender_without_storage_is_not_said_to_wait_for_commits() -> None:
    step = RepeatedStep(1000, [made(1000, 1000, p99_ms=14, server=0.78)])
    assert "storage commits" in limit_reason(step)
    reason = limit_reason(step, stores=False)
    assert "latency (p99 14 ms" in reason and "storage commits" not in reason


class SlowWriter:
    """A storage floor's writer whose every write takes longer than a trial."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0

    async def open(self) -> None: ...

    async def write(self, rows: Sequence[PositionParams]) -> None:
        self.started += 1
        await asyncio.sleep(0.3)
        self.finished += 1

    async def close(self) -> None: ...


def test_a_storage_floor_trial_ends_after_the_write_in_progress_not_inside_it() -> None:
    # Cancelled halfway, asyncpg's connection stays inside the transaction and COPY, and
    # every later trial's write was refused ("cannot use Connection.transaction() in a
    # manually started transaction": a full run on 2026-12-06).
    writer = SlowWriter()
    result = asyncio.run(trial(writer, RowSource(3, INSTRUMENTS), 5.0, 1_000.0, 0.0, 0.1))
    assert writer.started == writer.finished == 1
    assert result.added > 0 and result.committed == 0  # written, but after the window
