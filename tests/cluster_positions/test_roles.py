"""The roles as ``marketcast run --role`` runs them (``[node]``/``[bus]`` settings): an
ingest of a simulated venue, a positions shard and an edge; a client opens a position
and streams its profit through the edge, the shard's storage has it, and the edge and
the shard each time the op (``position_op``)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from app.positions_role import RunningShard, serve_shard
from bus.natsserver import NatsServer
from publish.auth import TokenAuthority
from publish.metrics.recorder import Stage
from tests.bus.nodes import SECRET, edge_node, edge_settings, ingest_node, ingest_settings
from tests.metrics_pages import unlabelled_samples
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

BTC = "binance:BTC-USDT"


async def test_a_position_through_an_edge_to_a_shard_of_the_roles(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    ingest = ingest_settings(tmp_path / "ingest.db", nats_server.url)
    shard_settings = ingest.with_role("positions").with_storage_path(str(tmp_path / "m.db"))
    ready: asyncio.Future[RunningShard] = asyncio.get_running_loop().create_future()
    async with ingest_node(ingest):
        shard_task = asyncio.create_task(serve_shard(shard_settings, on_ready=ready.set_result))
        try:
            shard = await ready
            await eventually(lambda: shard.registry.live_snapshot(BTC) is not None, "BTC live")
            edge = replace(edge_settings(nats_server.url), positions=shard_settings.positions)
            async with edge_node(edge) as node, connect(node.url) as ws:
                token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=60)
                for request in (
                    {"op": "auth", "id": 1, "token": token},
                    {
                        "op": "position.open",
                        "id": 2,
                        "position": {
                            "id": "p-1",
                            "instrument": BTC,
                            "side": "buy",
                            "qty": "1",
                            "price": "1",
                        },
                    },
                    {"op": "subscribe", "id": 3, "channel": "profit", "account": "acct-1"},
                ):
                    await ws.send(orjson.dumps(request).decode())
                    reply = orjson.loads(await ws.recv())
                    assert reply["type"] == "ack", reply
                while (message := orjson.loads(await ws.recv()))["type"] != "profit":
                    assert message["type"] == "profit_total", message
                assert message["position_id"] == "p-1" and message["mark"] is not None
                # Both time the op: the edge from the client's request to its ack queued,
                # which spans the shard's own time, from the bus to its answer sent.
                at_edge = node.metrics.recorder.stages[Stage.POSITION_OP]
                at_shard = shard.metrics.recorder.stages[Stage.POSITION_OP]
                await eventually(lambda: at_edge.count == at_shard.count == 1, "both timed it")
                assert at_edge.window.count == at_shard.window.count == 1
                assert at_edge.total > at_shard.total > 0
                async with httpx.AsyncClient() as http:
                    health = (await http.get(f"{node.http_url}/health")).json()
                    metrics = (await http.get(f"{node.http_url}/metrics")).text
                # The edge counts how its ops fared, and the profit it relays.
                positions = health["positions"]
                assert {key: positions[key] for key in ("ops", "acks", "unavailable")} == {
                    "ops": 1,
                    "acks": 1,
                    "unavailable": 0,
                }
                assert positions["watched_accounts"] == 1 and positions["profit_batches"] >= 1
                assert unlabelled_samples(metrics)["marketcast_edge_positions_acks_total"] == 1
        finally:
            shard_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shard_task
    with sqlite3.connect(tmp_path / "m-shard-0.db") as db:
        assert db.execute("SELECT account, id FROM positions").fetchall() == [("acct-1", "p-1")]
