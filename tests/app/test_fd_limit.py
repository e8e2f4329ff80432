"""File descriptors: ``marketcast run`` under a low open-file limit raises its soft limit
to the hard one, serves at most (limit - reserve) websocket sessions, refuses the next
with 503 ``too_many_connections`` and still answers /health and stores positions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from publish.auth import TokenAuthority
from publish.server import reserved_fds
from tests.waiting import eventually, within

pytestmark = pytest.mark.timeout(120)

SECRET = "fd-limit-test-secret-0123456789"
SOFT, HARD = 300, 420
BTC = "binance:BTC-USDT"


def lower_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


async def test_connections_stop_at_the_cap_and_the_reserve_keeps_serving(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        f"""
[server]
port = 0
[storage]
path = "{tmp_path / "m.db"}"
[auth]
secret = "{SECRET}"
[[venues]]
id = "binance"
symbols = ["BTC-USDT"]
simulate = true
"""
    )
    out, log = tmp_path / "out.txt", tmp_path / "log.jsonl"
    with out.open("wb") as stdout, log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "--log-format",
            "json",
            "run",
            "--config",
            str(config),
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=lower_open_file_limit,
        )
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(process.kill)
        url = ""

        def banner() -> bool:
            nonlocal url
            for line in out.read_text().splitlines():
                if "websocket:" in line:
                    url = line.split("websocket:", 1)[1].strip()
            assert process.returncode is None, log.read_text()
            return bool(url)

        await eventually(banner, "the server's banner", limit=30)
        cap = HARD - reserved_fds(feed_connections=1)
        entries = [orjson.loads(line) for line in log.read_text().splitlines()]
        messages = {entry["message"]: entry["level"] for entry in entries}
        assert messages[f"open-file limit raised from {SOFT} to the hard limit {HARD}"] == "INFO"
        # Unconfigured, but the open-file limit itself is below the default: a warning.
        assert (
            messages[
                f"serving at most {cap} connections, not [server.limits].max_connections "
                f"20000: the open-file limit is {HARD} and {reserved_fds(1)} descriptors are "
                "reserved for storage, feeds, bus and HTTP"
            ]
            == "WARNING"
        )
        assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)

        http_url = url.replace("ws://", "http://").removesuffix("/ws")
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=http_url))
        health = (await http.get("/health")).json()["connections"]
        assert (health["session_cap"], health["open_files_limit"]) == (cap, HARD)

        clients: list[ClientConnection] = []
        for _ in range(cap):
            clients.append(await stack.enter_async_context(connect(url)))
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 503
        assert orjson.loads(refused.value.response.body)["code"] == "too_many_connections"

        # The reserve still serves HTTP and storage: /health answers, a position is stored.
        health_now = await http.get("/health")
        assert health_now.json()["connections"]["websocket_sessions"] == cap
        ws = clients[0]
        token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=600)
        await ws.send(orjson.dumps({"op": "auth", "id": 1, "token": token}).decode())
        assert orjson.loads(await within(ws.recv(), "the auth ack"))["type"] == "ack"
        await ws.send(orjson.dumps({"op": "subscribe", "id": 2, "channel": "status"}).decode())
        while True:  # wait for BTC to be live, so a position can be opened on it
            message = orjson.loads(await within(ws.recv(), "BTC live"))
            if message.get("instrument") == BTC and message.get("state") == "live":
                break
        position = {"id": "p-1", "instrument": BTC, "side": "buy", "qty": "1", "price": "2"}
        await ws.send(orjson.dumps({"op": "position.open", "id": 3, "position": position}).decode())
        while (reply := orjson.loads(await within(ws.recv(), "the open's reply"))).get("id") != 3:
            pass
        assert reply["type"] == "ack", reply
        assert not [e for e in entries if e["level"] == "ERROR"]
    await within(process.wait(), "the killed server's exit")
