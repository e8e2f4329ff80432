"""``marketcast cluster`` as a user runs it: one ingest and two edges on one port over a
nats-server it starts. SIGKILL of an edge, of the ingest and of nats-server: each is
restarted and clients of the edges see their books go stale and come back with seqs
that never go back; SIGTERM stops everything; SIGKILL of the supervisor leaves no
process behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from bus.natsserver import free_port
from tests.waiting import eventually, within

pytestmark = pytest.mark.timeout(240)

BTC = "binance:BTC-USDT"
ETH = "binance:ETH-USDT"
CONFIG = """
[server]
port = {port}
[storage]
path = "{db}"
[auth]
secret = "a cluster test secret, long enough"
[simulator]
updates_per_second = 50.0
[bus]
stale_after_ms = 400
[[venues]]
id = "binance"
symbols = ["BTC-USDT", "ETH-USDT"]
simulate = true
"""


class Cluster:
    """A ``marketcast cluster`` process and the lines it printed."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())

    def printed(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in self.lines if (m := re.search(pattern, line))]

    def pid(self, child: str) -> int:
        """The child's current pid (from the supervisor's 'started' lines)."""
        return int(self.printed(rf"started {child} \(pid (\d+)\)")[-1].group(1))

    def pids(self) -> set[int]:
        return {int(m.group(1)) for m in self.printed(r"started \S+ \(pid (\d+)\)")}

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    port = free_port()
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG.format(port=port, db=tmp_path / "cluster.db"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "cluster",
        "--config",
        str(config),
        "--edges",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    running = Cluster(process, port)
    try:
        await eventually(
            lambda: bool(
                running.printed(r"marketcast cluster \(2 edges, 1 ingest, 1 positions shard\)")
            ),
            "the cluster's banner",
            limit=90,
        )
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await within(process.wait(), "the killed supervisor's exit")
        for pid in running.pids():  # never leave a child behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await running.reader


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Watcher:
    """A client of the edges' port: bbo and status of both instruments."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seqs: dict[str, list[int]] = {BTC: [], ETH: []}
        self.states: dict[str, list[str]] = {BTC: [], ETH: []}
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message: dict[str, Any] = orjson.loads(raw)
            if message["type"] == "bbo":
                self.seqs[message["instrument"]].append(message["seq"])
            elif message["type"] == "status":
                self.states[message["instrument"]].append(message["state"])

    def updates(self) -> int:
        return sum(len(seqs) for seqs in self.seqs.values())

    def never_back(self) -> bool:
        return all(
            a < b for seqs in self.seqs.values() for a, b in zip(seqs, seqs[1:], strict=False)
        )


@contextlib.asynccontextmanager
async def watcher(url: str) -> AsyncIterator[Watcher]:
    async with connect(url) as ws:
        for request in (
            {"op": "subscribe", "id": 1, "channel": "bbo", "instruments": [BTC, ETH]},
            {"op": "subscribe", "id": 2, "channel": "status"},
        ):
            await ws.send(orjson.dumps(request).decode())
        client = Watcher(ws)
        try:
            yield client
        finally:
            client.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.task


async def test_children_killed_are_restarted_and_clients_heal(tmp_path: Path) -> None:
    async with cluster(tmp_path) as running:
        first_edge = running.pid("edge-1")
        os.kill(first_edge, signal.SIGKILL)
        await eventually(lambda: running.pid("edge-1") != first_edge, "edge-1 restarted", limit=60)
        assert running.printed(r"edge-1 exited with status -9; restarting in")
        async with watcher(running.url) as client:
            await eventually(lambda: client.updates() > 20, "quotes through an edge", limit=60)
            # The ingest: silent past stale_after_ms, the books go stale, then come back.
            # Its restart waits 0.5 s before the new process even starts, so the silence
            # outlasts stale_after_ms (0.4 s) however fast the host (with 1 s, a fast host
            # had the new ingest publishing 1.0 s after the kill: never stale).
            before = running.pid("ingest")
            os.kill(before, signal.SIGKILL)
            await eventually(lambda: "stale" in client.states[BTC], "stale without its ingest")
            await eventually(lambda: running.pid("ingest") != before, "ingest restarted", limit=60)
            await eventually(
                lambda: client.states[BTC][-1:] == ["live"], "live again by itself", limit=60
            )
            # nats-server: restarted on its port, the edges reconnect and data flows again
            # (an outage shorter than stale_after_ms need not make anything stale).
            before, seen = running.pid("nats"), client.updates()
            os.kill(before, signal.SIGKILL)
            await eventually(lambda: running.pid("nats") != before, "nats restarted", limit=60)
            await eventually(
                lambda: len(running.printed(r"\[edge-\d\] .*bus reconnected")) == 2,
                "both edges reconnected",
                limit=60,
            )
            await eventually(lambda: client.updates() > seen + 20, "quotes again", limit=60)
            assert client.states[BTC][-1] == "live"
            assert client.never_back()
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), 60) == 0
        children = running.pids()
        await eventually(lambda: not any(alive(pid) for pid in children), "every child gone")
        assert running.printed(r"ingest stopped \(status 0\)")


async def shard_health(url: str) -> dict[str, Any]:
    """The shard's /health once it is on the bus and hears the ingest (bounded wait)."""
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            health: dict[str, Any] = (await http.get(url)).json()
            if health["node"]["bus"]["connected"] and health["node"]["bus"]["sources"]:
                return health
            await asyncio.sleep(0.1)
    raise AssertionError(f"the shard never heard the ingest: {health}")


async def test_a_killed_supervisor_leaves_no_process(tmp_path: Path) -> None:
    async with cluster(tmp_path) as running:
        children = running.pids()
        assert len(children) == 5  # nats, ingest, a positions shard, two edges
        # Every shard has an HTTP port of its own, printed in the banner.
        (url,) = [m.group(1) for m in running.printed(r"^  shard 0: +(http://\S+/health)")]
        health = await shard_health(url)
        assert health["node"]["role"] == "positions"
        assert (health["positions"]["shard"], health["positions"]["shards"]) == (0, 1)
        assert health["storage"]["health"] == "healthy"
        running.process.kill()
        await within(running.process.wait(), "the killed supervisor's exit")
        await eventually(
            lambda: not any(alive(pid) for pid in children), "children exit with their parent"
        )
