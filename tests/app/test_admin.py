"""Admin ops against a running server with a simulated venue (real sockets): an admin
token resyncs one instrument and reconnects one venue; anyone else is ``forbidden``;
each op is logged and counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.logs import JsonFormatter
from app.runtime import RunningServer, serve
from app.settings import AuthSettings
from publish.auth import TokenAuthority
from tests.app.test_end_to_end import INSTRUMENTS, demo_settings
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

SECRET = "admin-test-secret-0123456789abcdef"
TOKENS = TokenAuthority(SECRET.encode())
BTC = "binance:BTC-USDT"


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = replace(demo_settings(tmp_path / "m.db"), auth=AuthSettings(secret=SECRET))
    ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, on_ready=ready.set_result))
    server = await asyncio.wait_for(ready, 15)
    try:
        await eventually(lambda: all(server.registry.is_live(i) for i in INSTRUMENTS), "live")
        yield server
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def request(ws: ClientConnection, **message: Any) -> dict[str, Any]:
    """Send ``message``; its reply (other frames are skipped)."""
    await ws.send(orjson.dumps(message).decode())
    while True:
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply.get("id") == message["id"] and reply["type"] in ("ack", "error"):
            return dict(reply)


async def statuses_until_live_again(ws: ClientConnection, instruments: set[str]) -> list[Any]:
    """``status`` messages of ``instruments`` until each went stale and then live again."""
    seen: list[Any] = []
    back: set[str] = set()
    stale: set[str] = set()
    while back != instruments:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        if message.get("type") != "status" or message["instrument"] not in instruments:
            continue
        seen.append((message["instrument"], message["state"], message["reason"]))
        if message["state"] == "stale":
            stale.add(message["instrument"])
        elif message["state"] == "live" and message["instrument"] in stale:
            back.add(message["instrument"])
    return seen


async def test_admin_ops_need_the_admin_role(demo: RunningServer) -> None:
    async with connect(demo.url) as ws:
        op = {"op": "admin.resync", "id": 1, "instrument": BTC}
        refusal = {
            "type": "error",
            "id": 1,
            "code": "forbidden",
            "message": "admin ops need a token with the admin role",
        }
        assert await request(ws, **op) == refusal  # anonymous
        for role in ({}, {"operator": True}):
            token = TOKENS.issue("acct-1", ttl=60, **role)
            assert (await request(ws, op="auth", id=2, token=token))["type"] == "ack"
            assert await request(ws, **op) == refusal
        reconnect = {"op": "admin.reconnect", "id": 1, "venue": "binance"}
        assert await request(ws, **reconnect) == refusal
    counters = demo.metrics.fanout
    assert (counters.admin_refused, counters.admin_resyncs, counters.admin_reconnects) == (4, 0, 0)
    assert all(demo.registry.is_live(name) for name in INSTRUMENTS)


async def test_an_admin_resyncs_one_instrument_and_reconnects_one_venue(
    demo: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    runner = demo.runners[0]
    connections = runner.connections
    async with connect(demo.url) as ws:
        token = TOKENS.issue("ops", ttl=60, admin=True)
        assert (await request(ws, op="auth", id=1, token=token))["type"] == "ack"
        assert (await request(ws, op="subscribe", id=2, channel="status"))["type"] == "ack"
        with caplog.at_level(logging.WARNING):
            assert await request(ws, op="admin.resync", id=3, instrument=BTC) == {
                "type": "ack",
                "id": 3,
                "op": "admin.resync",
                "instrument": BTC,
            }
            seen = await statuses_until_live_again(ws, {BTC})
        # Only that instrument: the others stayed live throughout.
        assert {name for name, _, _ in seen} == {BTC}
        assert (BTC, "stale", "requested: admin.resync by ops") in seen
        assert runner.connections == connections
        assert "admin.resync binance:BTC-USDT (asked by account ops)" in caplog.text
        # --log-format json carries the venue and instrument of feed records as fields.
        stale = next(r for r in caplog.records if getattr(r, "instrument", None) == BTC)
        entry = orjson.loads(JsonFormatter().format(stale))
        assert (entry["venue"], entry["instrument"], entry["problem"]) == (
            "binance",
            BTC,
            "requested",
        )

        with caplog.at_level(logging.WARNING):
            assert await request(ws, op="admin.reconnect", id=4, venue="binance") == {
                "type": "ack",
                "id": 4,
                "op": "admin.reconnect",
                "venue": "binance",
            }
            await statuses_until_live_again(ws, set(INSTRUMENTS))
        assert runner.connections == connections + 1
        assert "admin.reconnect binance (asked by account ops)" in caplog.text

        assert await request(ws, op="admin.resync", id=5, instrument="okx:BTC-USDT") == {
            "type": "error",
            "id": 5,
            "code": "unknown_instrument",
            "message": "no feed carries 'okx:BTC-USDT' right now",
        }
        assert await request(ws, op="admin.reconnect", id=6, venue="kraken") == {
            "type": "error",
            "id": 6,
            "code": "unknown_venue",
            "message": "no connected feed of venue 'kraken'",
        }
        assert await request(ws, op="admin.reconnect", id=7) == {
            "type": "error",
            "id": 7,
            "code": "bad_request",
            "message": "venue must be a non-empty string",
        }
    counters = demo.metrics.fanout
    assert (counters.admin_resyncs, counters.admin_reconnects) == (1, 1)
