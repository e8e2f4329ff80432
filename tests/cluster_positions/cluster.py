"""Cluster parts for position tests, in this process over a real nats-server: an ingest
publishing a simulated market, positions shards (``app.positions_role.serve_shard`` on
real storage) and edges (a websocket server whose positions are a ``ShardClient`` and
whose profit channel is a ``ProfitRelay``), each startable and stoppable alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection

from app.positions_role import BusPlace, EdgePositions, RunningShard, edge_positions, serve_shard
from app.settings import (
    AuthSettings,
    PositionSettings,
    ServerSettings,
    Settings,
    StorageSettings,
)
from book.fixed import SCALE
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from bus.edge import BusEdge
from bus.ingest import BusPublisher
from bus.link import BusLink
from bus.subjects import Subjects
from publish.auth import AuthPolicy, TokenAuthority
from publish.exceptions import RequestError
from publish.fanout import Fanout
from publish.position import Position
from publish.server import MarketServer
from tests.publish.support import receive, send

PREFIX = "ptest"
BTC = "sim:BTC-USDT"
ETH = "sim:ETH-USDT"
SECRET = b"0123456789abcdef-cluster-secret"
TOKENS = TokenAuthority(SECRET)


def place(url: str, *, shards: int, shard: int = 0) -> BusPlace:
    return BusPlace(servers=(url,), prefix=PREFIX, shards=shards, shard=shard, stale_after_ms=2_000)


def settings_for(storage: StorageSettings, *, ack_timeout_ms: float = 2_000) -> Settings:
    """A shard's settings: its HTTP on a free port, its token secret given."""
    return Settings(
        server=ServerSettings(port=0),
        storage=storage,
        positions=PositionSettings(ack_timeout_ms=ack_timeout_ms),
        auth=AuthSettings(secret=SECRET.decode()),
    )


def sqlite(db: Path) -> StorageSettings:
    return StorageSettings(backend="sqlite", path=str(db), window_ms=2)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _run_all(*roles: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async with asyncio.TaskGroup() as group:
        for role in roles:
            group.create_task(role())


@dataclass
class Ingest:
    publisher: BusPublisher
    seq: int = 0

    def quote(self, instrument: str, bid: int, ask: int) -> None:
        """A top of book at whole-unit prices ``bid``/``ask``."""
        self.seq += 1
        b, a = bid * SCALE, ask * SCALE
        self.publisher.publish(
            BookSnapshot(
                instrument, self.seq, 1, 2, 3, b, SCALE, a, SCALE, ((b, SCALE),), ((a, SCALE),)
            )
        )


@contextlib.asynccontextmanager
async def ingest(url: str, *instruments: str) -> AsyncIterator[Ingest]:
    registry = BookRegistry()
    link = BusLink([url], name="ingest")
    publisher = BusPublisher(registry, link, Subjects(PREFIX))
    task = asyncio.create_task(_run_all(link.run, publisher.run))
    try:
        await link.wait_connected()
        node = Ingest(publisher)
        for name in instruments:
            publisher.add_instrument(name, 0)
            publisher.set_status(InstrumentStatus(name, InstrumentState.LIVE, "in sync", 1))
            node.quote(name, 100, 101)
        yield node
    finally:
        await _stop(task)


@dataclass
class Shard:
    running: RunningShard
    task: asyncio.Task[None]

    async def stop(self) -> None:
        await _stop(self.task)


class NotingReply:
    """A ``PositionReply`` that writes down what it was given."""

    def __init__(self, events: list[str]) -> None:
        self._events = events

    def acknowledge(self, position: Position) -> None:
        self._events.append(f"ack {position.id}")

    def refuse(self, refusal: RequestError) -> None:
        self._events.append(f"refused {refusal.code}")


async def start_shard(settings: Settings, bus: BusPlace) -> Shard:
    ready: asyncio.Future[RunningShard] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_shard(settings, bus, on_ready=ready.set_result))
    done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise AssertionError("the shard stopped before it was ready")
    return Shard(ready.result(), task)


@dataclass
class Edge:
    server: MarketServer
    positions: EdgePositions
    registry: BookRegistry

    @property
    def url(self) -> str:
        return self.server.url


@contextlib.asynccontextmanager
async def edge(bus: BusPlace, *, ack_timeout: float = 2.0) -> AsyncIterator[Edge]:
    registry = BookRegistry()
    link = BusLink(bus.servers, name="edge")
    market = BusEdge(registry, link, Subjects(bus.prefix), stale_after=bus.stale_after_ms / 1000)
    fanout = Fanout(registry, metrics_interval=None)
    positions = edge_positions(fanout, link, bus, ack_timeout=ack_timeout)
    policy = AuthPolicy(tokens=TOKENS)
    task = asyncio.create_task(_run_all(link.run, market.run, positions.service.run))
    try:
        async with MarketServer(
            registry, fanout, auth=policy, positions=positions.service
        ) as server:
            await link.wait_connected()
            yield Edge(server, positions, registry)
    finally:
        await _stop(task)


async def login(ws: ClientConnection, account: str) -> None:
    await send(ws, op="auth", id="auth", token=TOKENS.issue(account, ttl=3600))
    reply = await receive(ws)
    assert (reply["type"], reply["account"]) == ("ack", account), reply


def open_request(
    request_id: object,
    position_id: str,
    *,
    instrument: str = BTC,
    side: str = "buy",
    qty: str = "2",
    price: str = "90",
) -> dict[str, Any]:
    return {
        "op": "position.open",
        "id": request_id,
        "position": {
            "id": position_id,
            "instrument": instrument,
            "side": side,
            "qty": qty,
            "price": price,
        },
    }


def accounts_of_shards(shards: int, count: int = 1) -> list[list[str]]:
    """``count`` account names owned by each shard."""
    from bus.positions import shard_of

    found: list[list[str]] = [[] for _ in range(shards)]
    n = 0
    while any(len(names) < count for names in found):
        name = f"acct-{n}"
        owner = found[shard_of(name, shards)]
        if len(owner) < count:
            owner.append(name)
        n += 1
    return found
