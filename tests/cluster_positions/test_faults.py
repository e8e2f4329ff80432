"""Faults of a cluster with positions, with real processes (SIGKILL), a real nats-server
and real storage: nothing acknowledged is lost, nothing is acknowledged before it is
committed, a retry with the same position id gets the same acknowledgement."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from book.fixed import SCALE
from book.registry import BookRegistry
from bus.natsserver import NatsServer
from tests.cluster_positions.cluster import (
    BTC,
    Shard,
    accounts_of_shards,
    edge,
    ingest,
    login,
    place,
    settings_for,
    sqlite,
    start_shard,
)
from tests.cluster_positions.processes import Trader, reaped, spawn_edge, spawn_shard, streaming
from tests.postgres import PG_ADDRESS, dsn_via, fresh_schema, pg_query
from tests.publish.support import receive, send
from tests.tcpproxy import TcpProxy
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(150)

PACE = 0.02
"""Seconds between two opens of one connection (below the server's op rate limit)."""


def sqlite_positions(db: Path) -> dict[str, tuple[Any, ...]]:
    """``(account, id) -> (qty, opened_ts, closed_ts)`` of every stored position."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT account, id, qty, opened_ts, closed_ts FROM positions"
        ).fetchall()
    return {f"{account}/{pid}": (qty, opened, closed) for account, pid, qty, opened, closed in rows}


def check_stored(trader: Trader, stored: dict[str, tuple[Any, ...]]) -> None:
    """Every acknowledged position is stored as acknowledged; every stored one was sent,
    whole (its order's quantity, open)."""
    mine = {
        key.split("/", 1)[1]: row
        for key, row in stored.items()
        if key.startswith(trader.account + "/")
    }
    for position_id, position in trader.acks.items():
        assert position_id in mine, f"acknowledged {position_id} is not stored"
        assert mine[position_id][1] == position["opened_ts"]
    sent = set(trader.sent)
    for position_id, (qty, _opened, closed) in mine.items():
        assert position_id in sent, f"{position_id} stored but never sent"
        assert closed is None
        assert qty is not None


async def test_sigkill_of_a_shard_under_load_loses_no_acknowledged_position(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    (a,), (b,) = accounts_of_shards(2)
    storage = {"backend": "sqlite", "path": str(tmp_path / "pos.db"), "window_ms": 2}
    url = nats_server.url
    on_0, on_1 = Trader(a, "a"), Trader(b, "b")
    async with ingest(url, BTC):
        async with reaped(await spawn_shard(url, 1, 2, storage)):
            shard0 = await spawn_shard(url, 0, 2, storage)
            try:
                async with (
                    edge(place(url, shards=2), ack_timeout=1.0) as node,
                    streaming(node.url, on_0, pace=PACE),
                    streaming(node.url, on_1, pace=PACE),
                ):
                    await eventually(lambda: len(on_0.acks) >= 60, "shard 0 acks under load")
                    shard0.kill()
                    await shard0.process.wait()
                    acked_before = len(on_1.acks)
                    refused = lambda: sum(  # noqa: E731
                        "storage_unavailable" in codes for codes in on_0.errors.values()
                    )
                    await eventually(lambda: refused() >= 5, "shard 0's accounts refused")
                    await eventually(
                        lambda: len(on_1.acks) >= acked_before + 40, "shard 1 keeps acking"
                    )
                    shard0 = await spawn_shard(url, 0, 2, storage)
                    acked_after = len(on_0.acks)
                    await eventually(lambda: len(on_0.acks) >= acked_after + 40, "shard 0 back")
                # The edge is gone; the shard holds what it committed.
                stored = sqlite_positions(tmp_path / "pos-shard-0.db")
                check_stored(on_0, stored)
                assert not any(key.startswith(b + "/") for key in stored)
                # Every open refused or unanswered, sent again, gets acked once, and those
                # that had been acked get the very same ack.
                async with edge(place(url, shards=2), ack_timeout=1.0) as again:
                    unacked = [pid for pid in on_0.sent if pid not in on_0.acks]
                    await on_0.retry(again.url, unacked + list(on_0.acks)[:20])
                stored = sqlite_positions(tmp_path / "pos-shard-0.db")
                check_stored(on_0, stored)
                assert sorted(k for k in stored if k.startswith(a + "/")) == sorted(
                    f"{a}/{pid}" for pid in on_0.sent
                )
            finally:
                await shard0.reap()
        check_stored(on_1, sqlite_positions(tmp_path / "pos-shard-1.db"))


async def test_sigkill_of_an_edge_with_ops_in_flight(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    (a,) = accounts_of_shards(1)[0]
    settings = settings_for(sqlite(tmp_path / "pos.db"))
    url = nats_server.url
    trader = Trader(a, "e")
    async with ingest(url, BTC):
        shard = await start_shard(settings, place(url, shards=1))
        try:
            await eventually(
                lambda: shard.running.registry.status(BTC) is not None, "shard sees BTC"
            )
            first = await spawn_edge(url, 1)
            try:
                async with streaming(first.url, trader, pace=PACE / 4) as stream:
                    await eventually(lambda: len(trader.acks) >= 30, "acks through the first edge")
                    first.kill()  # with up to 8 opens in flight
                    await first.process.wait()
                    await eventually(stream.done, "the connection is gone")
            finally:
                await first.reap()
            unanswered = [pid for pid in trader.sent if pid not in trader.acks]
            assert unanswered, "no op was in flight when the edge died"
            # No ack was sent for anything the shard had not committed.
            committed = {p.id: p for p in shard.running.book.positions(a)}
            for position_id, position in trader.acks.items():
                assert committed[position_id].opened_ts == position["opened_ts"]
            check_stored(trader, await stored_after_flush(shard, tmp_path / "pos-shard-0.db"))
            # The client sends everything again through another edge: the same acks for
            # what was acked, one position for each id.
            async with edge(place(url, shards=1)) as second:
                await trader.retry(second.url, list(trader.sent))
            assert sorted(p.id for p in shard.running.book.positions(a)) == sorted(trader.sent)
        finally:
            await shard.stop()


async def stored_after_flush(shard: Shard, db: Path) -> dict[str, tuple[Any, ...]]:
    await shard.running.flusher.drain()
    return sqlite_positions(db)


async def test_shards_on_postgresql_ride_out_a_database_outage(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    (a,), (b,) = accounts_of_shards(2)
    url = nats_server.url
    traders = [Trader(a, "a"), Trader(b, "b")]
    async with fresh_schema() as schema, TcpProxy(*PG_ADDRESS) as proxy, ingest(url, BTC) as market:
        storage = {
            "backend": "postgres",
            "dsn": dsn_via(proxy.port),
            "schema": schema,
            "window_ms": 2,
            "timeout_ms": 2_000,
        }
        async with (
            reaped(await spawn_shard(url, 0, 2, storage)),
            reaped(await spawn_shard(url, 1, 2, storage)),
            edge(place(url, shards=2), ack_timeout=1.0) as node,
        ):
            for trader in traders:
                await trader.retry(node.url, [f"{trader.prefix}-0"])
            proxy.cut()
            for trader in traders:
                async with connect(node.url) as ws:
                    await login(ws, trader.account)
                    await send(ws, **trader.request(1, f"{trader.prefix}-1"))
                    refused = await receive(ws)
                    assert (refused["type"], refused["code"]) == ("error", "storage_unavailable")
            # Market data does not need the database.
            market.quote(BTC, 120, 121)
            await eventually(lambda: bid_of(node.registry, BTC) == 120 * SCALE, "a quote flows")
            proxy.restore()
            # The shards come back by themselves: the very same opens are acked now.
            for trader in traders:
                await trader.retry(node.url, [f"{trader.prefix}-1", f"{trader.prefix}-0"])
        rows = await pg_query(f'SELECT account, id, opened_ts FROM "{schema}".positions')
        for trader in traders:
            stored = {pid: opened for account, pid, opened in rows if account == trader.account}
            assert stored == {pid: p["opened_ts"] for pid, p in trader.acks.items()}
            assert sorted(stored) == [f"{trader.prefix}-0", f"{trader.prefix}-1"]


def bid_of(registry: BookRegistry, instrument: str) -> int | None:
    snapshot = registry.get(instrument)
    return None if snapshot is None else snapshot.bid
