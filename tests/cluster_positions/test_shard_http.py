"""A positions shard's HTTP, as every node has: /health and /metrics say its role, which
shard it is, its bus link, the positions and accounts it holds, the ops it served and
refused, its storage, and the op latency as a histogram; no websockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from bus.natsserver import NatsServer
from publish.metrics.recorder import Stage
from tests.cluster_positions.cluster import (
    BTC,
    accounts_of_shards,
    edge,
    ingest,
    login,
    open_request,
    place,
    settings_for,
    sqlite,
    start_shard,
)
from tests.metrics_pages import unlabelled_samples
from tests.publish.support import receive, send
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


def build_role(text: str) -> str:
    for family in text_string_to_metric_families(text):
        if family.name == "marketcast_build_info":
            return str(family.samples[0].labels["role"])
    raise AssertionError("no marketcast_build_info")


async def test_a_shard_serves_health_and_metrics_with_its_positions_bus_and_storage(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    _, (account,) = accounts_of_shards(2)  # an account of shard 1
    settings = settings_for(sqlite(tmp_path / "pos.db"))
    async with ingest(nats_server.url, BTC):
        shard = await start_shard(settings, place(nats_server.url, shards=2, shard=1))
        running = shard.running
        try:
            await eventually(lambda: running.registry.status(BTC) is not None, "the shard sees BTC")
            async with edge(place(nats_server.url, shards=2)) as node, connect(node.url) as ws:
                await login(ws, account)
                await send(ws, **open_request(1, "p-1"))
                assert (await receive(ws))["type"] == "ack"
                await send(ws, **open_request(2, "p-2", instrument="sim:NOPE-USDT"))
                assert (await receive(ws))["code"] == "unknown_instrument"
            op_latency = running.metrics.recorder.stages[Stage.POSITION_OP]
            await eventually(lambda: op_latency.count == 2, "a metrics report with both ops")
            async with httpx.AsyncClient() as http:
                response = await http.get(f"{running.http_url}/health")
                metrics = (await http.get(f"{running.http_url}/metrics")).text
                stats = (await http.get(f"{running.http_url}/stats")).json()
                websocket = await http.get(f"{running.http_url}/ws")
        finally:
            await shard.stop()
    health: dict[str, Any] = response.json()
    assert response.status_code == 200, health
    assert health["node"]["role"] == "positions"
    bus = health["node"]["bus"]
    assert bus["connected"] is True and bus["server"] == nats_server.url
    assert bus["sources"] == 1 and bus["last_message_age_ms"] is not None
    assert health["positions"] == {
        "shard": 1,
        "shards": 2,
        "open": 1,
        "accounts": 1,
        "watched_accounts": 0,
        "ops": 2,
        "acks": 1,
        "refusals": 1,
        "bad_requests": 0,
        "wrong_shard": 0,
        "watches": 0,
        "profit_batches": 0,
    }
    assert health["storage"]["backend"] == "sqlite"
    assert health["storage"]["health"] == "healthy"
    assert health["storage"]["pending_rows"] == 0
    assert build_role(metrics) == "positions"
    values = unlabelled_samples(metrics)
    assert values["marketcast_positions_shard"] == 1
    assert values["marketcast_positions_shards"] == 2
    assert values["marketcast_positions_open"] == 1
    assert values["marketcast_positions_accounts"] == 1
    assert values["marketcast_positions_ops_total"] == 2
    assert values["marketcast_positions_acks_total"] == 1
    assert values["marketcast_positions_refusals_total"] == 1
    assert values["marketcast_bus_connected"] == 1
    assert values["marketcast_bus_last_message_age_seconds"] >= 0
    assert values["marketcast_db_pending_rows"] == 0
    assert values["marketcast_db_healthy"] == 1
    assert values["marketcast_position_op_histogram_seconds_count"] == 2
    assert values["marketcast_position_op_seconds_count"] == 2
    assert stats["totals"]["stages"]["position_op"]["count"] == 2
    assert websocket.status_code == 404  # a shard has no websocket clients
