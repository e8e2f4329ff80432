"""The single process times its position ops as ``marketcast run`` wires it: every op that
reaches the position book, acked or refused, is one ``position_op`` sample on /stats and
/metrics, spanning the group-commit window for an ack; a request refused before it
reaches the book (no token) is not one. Real websockets, real SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.settings import AuthSettings, ServerSettings, Settings, StorageSettings
from book.status import InstrumentState, InstrumentStatus
from publish.auth import TokenAuthority
from publish.metrics.recorder import Stage
from tests.app.serving import running
from tests.metrics_pages import unlabelled_samples
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

SECRET = "position-op-metric-secret-0123456789"
BTC = "binance:BTC-USDT"
WINDOW_MS = 5.0


def order_settings(db: Path) -> Settings:
    """No venues: the test adds its instrument to the registry once the server is up."""
    return Settings(
        server=ServerSettings(port=0),
        storage=StorageSettings(backend="sqlite", path=str(db), window_ms=WINDOW_MS),
        auth=AuthSettings(secret=SECRET),
    )


async def ask(ws: ClientConnection, **request: object) -> dict[str, object]:
    await ws.send(orjson.dumps(request).decode())
    reply: dict[str, object] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply.get("id") == request["id"], reply
    return reply


def open_request(request_id: int, position_id: str, side: str = "buy") -> dict[str, object]:
    position = {"id": position_id, "instrument": BTC, "side": side, "qty": "1", "price": "2"}
    return {"op": "position.open", "id": request_id, "position": position}


async def test_every_op_the_book_answers_is_a_position_op_sample(tmp_path: Path) -> None:
    async with running(order_settings(tmp_path / "m.db")) as server, connect(server.url) as ws:
        server.registry.add_instrument(BTC)
        server.registry.set_status(InstrumentStatus(BTC, InstrumentState.LIVE, "test", 0))
        refused = await ask(ws, **open_request(1, "p-0"))  # no token: never reaches the book
        assert refused["code"] == "auth_required", refused
        token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=60)
        assert (await ask(ws, op="auth", id=2, token=token))["type"] == "ack"
        assert (await ask(ws, **open_request(3, "p-1")))["type"] == "ack"
        assert (await ask(ws, **open_request(4, "p-2")))["type"] == "ack"
        invalid = await ask(ws, **open_request(5, "p-3", side="hold"))
        assert invalid["code"] == "invalid_position", invalid
        closed = await ask(ws, op="position.close", id=6, position_id="p-1")
        assert closed["type"] == "ack", closed

        op_latency = server.metrics.recorder.stages[Stage.POSITION_OP]
        await eventually(lambda: op_latency.count == 4, "a metrics report with the four ops")
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            stats = (await http.get("/stats")).json()
            metrics = (await http.get("/metrics")).text
    assert stats["totals"]["stages"]["position_op"]["count"] == 4
    # Three of the four waited for their commit: most of a window at least (uvloop's timers
    # count whole milliseconds, from a loop time read at the start of the loop's turn);
    # the refusal was answered in the call.
    window = stats["window"]["stages"]["position_op"]
    assert window["count"] == 4
    assert window["p50"] >= (WINDOW_MS - 2) * 1e6
    assert window["p50"] <= window["max"] < 10e9
    values = unlabelled_samples(metrics)
    assert values["marketcast_position_op_seconds_count"] == 4
    assert values["marketcast_position_op_histogram_seconds_count"] == 4
