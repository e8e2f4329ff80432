"""Cluster nodes in processes of their own (``tests.cluster_positions.node``), and
clients that stream position opens through an edge and record every answer."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.cluster_positions.cluster import login, open_request
from tests.publish.support import receive, send
from tests.waiting import within

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0


@dataclass
class Node:
    process: asyncio.subprocess.Process
    url: str = ""

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing drained."""
        if self.process.returncode is None:
            self.process.kill()

    async def reap(self) -> None:
        self.kill()
        await self.process.wait()


async def spawn(*args: str) -> Node:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.cluster_positions.node",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"node {args[0]} exited ({await process.wait()})")
                if line.startswith("READY"):
                    return Node(process, line.split()[1] if len(line.split()) > 1 else "")
    except BaseException:
        process.kill()
        await within(process.wait(), "the killed node's exit")
        raise


async def spawn_shard(url: str, shard: int, shards: int, storage: dict[str, Any]) -> Node:
    return await spawn("shard", url, str(shard), str(shards), orjson.dumps(storage).decode())


async def spawn_edge(url: str, shards: int) -> Node:
    return await spawn("edge", url, str(shards))


@contextlib.asynccontextmanager
async def reaped(node: Node) -> AsyncIterator[Node]:
    try:
        yield node
    finally:
        await node.reap()


@dataclass
class Trader:
    """One account's connection: sends opens ``<prefix>-<n>`` and records the answers."""

    account: str
    prefix: str
    sent: list[str] = field(default_factory=list)
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """position id -> the position as acknowledged."""
    errors: dict[str, list[str]] = field(default_factory=dict)
    """position id -> the codes of its refusals, in order."""

    def qty(self, position_id: str) -> str:
        return f"{int(position_id.rsplit('-', 1)[1]) % 7 + 1}"

    def request(self, request_id: int, position_id: str) -> dict[str, Any]:
        return open_request(request_id, position_id, qty=self.qty(position_id))

    async def stream(self, ws: ClientConnection, *, pace: float, in_flight: int = 8) -> None:
        """Open positions until cancelled, at most ``in_flight`` unanswered, one per
        ``pace`` seconds at most (the server's op rate limit)."""
        window = asyncio.Semaphore(in_flight)
        reader = asyncio.create_task(self._read(ws, window))
        try:
            n = 0
            while True:
                await window.acquire()
                position_id = f"{self.prefix}-{n}"
                self.sent.append(position_id)
                await send(ws, **self.request(n, position_id))
                n += 1
                await asyncio.sleep(pace)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader

    async def _read(self, ws: ClientConnection, window: asyncio.Semaphore) -> None:
        while True:
            self.note(await receive(ws))
            window.release()

    def note(self, reply: dict[str, Any]) -> str:
        """Record one answer; the position id it answers."""
        request_id = reply["id"]
        position_id = f"{self.prefix}-{request_id}"
        if reply["type"] == "ack":
            assert reply["position"]["id"] == position_id, reply
            self.acks[position_id] = reply["position"]
        else:
            self.errors.setdefault(position_id, []).append(reply["code"])
        return position_id

    async def retry(self, url: str, position_ids: list[str]) -> None:
        """Send each open again (same id, same order) on a new connection to ``url`` until
        acknowledged."""
        async with connect(url) as ws:
            await login(ws, self.account)
            for position_id in position_ids:
                n = int(position_id.rsplit("-", 1)[1])
                while True:
                    await send(ws, **self.request(n, position_id))
                    reply = await receive(ws)
                    before = self.acks.get(position_id)
                    self.note(reply)
                    if reply["type"] == "ack":
                        assert before is None or before == reply["position"], (before, reply)
                        break
                    assert reply["code"] == "storage_unavailable", reply
                    await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def streaming(url: str, trader: Trader, *, pace: float) -> AsyncIterator[asyncio.Task[None]]:
    async with connect(url) as ws:
        await login(ws, trader.account)
        task = asyncio.create_task(trader.stream(ws, pace=pace))
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
