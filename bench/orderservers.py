"""The servers an order-entry run measures, each in a fresh process of its own.

- ``marketcast``: the whole single-process server as ``marketcast run`` wires it
  (``app.runtime.serve``: storage and its flusher, the position book, the profit
  engine, token auth, the subscription server, metrics), on SQLite (a file in a
  temporary directory) or PostgreSQL (a schema of its own), with no venues: the
  instruments the orders name are added to its registry once it is up. Limits are
  raised for the bench (``order_settings``): a connection may send as many requests as
  the driver offers and an account may hold every position a run opens.
- ``websocket floor``: a bare ``websockets`` server that answers every request on its
  connection with an ack-shaped frame: for ``position.open`` the same ack marketcast
  sends (``encode_position_ack`` of the position as received, amounts parsed and
  formatted back), for anything else (``auth``) a small ack. No validation, no
  storage, no auth: the floor of websocket request/reply of the same frames.
- ``lean Python server``: the least a Python server does per open, on SQLite
  (``bench.leanorders``): the handshake, simple text frames, token auth, the open's
  checks, the bare storage floor's group commit, marketcast's ack once committed.

- ``ClusterOrderServer``: the cluster's order entry, three nodes in processes of their
  own (``bench.clusternodes``) on a nats-server the caller started: an edge (``run --role
  edge``) that the clients connect to and that routes every ``position.open`` to the one
  positions shard (``run --role positions``, shard 0 of 1, with the same storage, auth
  and limits as the single process), which acks after its group commit; and an ingest
  (``run --role ingest``) that makes the orders' instruments known to both over the bus
  (added as live, no market data). Its CPU is the edge's, and the shard's beside it.

A server's CPU is read on its event loop's thread: the whole process, and that thread
alone (``bench.cpuclock``).

Every server here answers ``OrderServer``: the clients, the ramp and the report need
nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve

from app.runtime import RunningServer
from app.runtime import serve as run_server
from app.settings import AuthSettings, PositionSettings, ServerSettings, Settings, StorageSettings
from bench.agent import Command, HelperProcess, serve_commands, started
from bench.clusternodes import NodeProcess, NodeSpec
from bench.cpuclock import CpuClock
from bench.leanorders import LeanOrderServer
from bench.servers import instrument_names
from bench.stagewindow import StageWindow
from book.fixed import parse_fixed
from book.status import InstrumentState, InstrumentStatus
from publish.client import ServerLimits
from publish.metrics.cpu import CpuTimes
from publish.metrics.hdr import Summary
from publish.metrics.recorder import Stage
from publish.position import Position, PositionSide
from publish.protocol import Op, encode_position_ack

BENCH_LIMIT = 1_000_000_000
"""Requests per second and positions per account a bench server allows: never reached."""
FLOOR_ACCOUNT = "acct-00000"
"""The account the websocket floor puts in its acks (as long as the real ones)."""


class OrderServerKind(StrEnum):
    MARKETCAST = "marketcast"
    LEAN = "lean Python server"
    WEBSOCKET_FLOOR = "websocket floor"


@dataclass(frozen=True, slots=True)
class OrderServerSpec:
    kind: OrderServerKind
    backend: str = "sqlite"
    """``sqlite`` or ``postgres`` (marketcast only)."""
    instruments: tuple[str, ...] = ()
    connections: int = 100
    secret: str = ""
    """The token secret of marketcast's ``[auth]`` (the parent issues the tokens)."""
    pg_dsn: str = ""
    pg_schema: str = ""
    max_per_account: int = BENCH_LIMIT
    """``[positions].max_per_account`` of marketcast."""


def order_settings(spec: OrderServerSpec, directory: Path) -> Settings:
    """The settings of a marketcast order server (``directory`` holds its SQLite file)."""
    limits = ServerLimits(
        max_connections=spec.connections + 100,
        ops_per_second=BENCH_LIMIT,
        ops_burst=BENCH_LIMIT,
    )
    storage = (
        StorageSettings(backend="postgres", dsn=spec.pg_dsn, schema=spec.pg_schema)
        if spec.backend == "postgres"
        else StorageSettings(backend="sqlite", path=str(directory / "orders.db"))
    )
    return Settings(
        server=ServerSettings(host="127.0.0.1", port=0, limits=limits),
        storage=storage,
        auth=AuthSettings(secret=spec.secret),
        positions=PositionSettings(max_per_account=spec.max_per_account),
    )


class _MarketcastOrders:
    def __init__(self, spec: OrderServerSpec) -> None:
        self._spec = spec
        self._directory = tempfile.TemporaryDirectory(prefix="marketcast-bench-orders-")
        self._task: asyncio.Task[None] | None = None
        self.url = ""
        self.ops = StageWindow()
        """The server's own ``position_op`` stage (op submitted -> its answer queued)."""

    async def start(self) -> None:
        settings = order_settings(self._spec, Path(self._directory.name))
        ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(
            run_server(settings, on_ready=ready.set_result)
        )
        running = await started(ready, self._task)
        self.ops.watch(running.metrics.recorder.stages[Stage.POSITION_OP])
        for name in self._spec.instruments:
            running.registry.add_instrument(name)
            running.registry.set_status(InstrumentStatus(name, InstrumentState.LIVE, "bench", 0))
        self.url = running.url

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._directory.cleanup()


class _WebsocketFloor:
    def __init__(self, spec: OrderServerSpec) -> None:
        self._limits = ServerLimits(max_connections=spec.connections + 100)
        self._server: Server | None = None
        self.url = ""
        self.ops = StageWindow()
        """Never watched: the floor keeps no stages."""

    async def _answer(self, connection: ServerConnection) -> None:
        async for message in connection:
            request = orjson.loads(message)
            if request.get("op") == Op.POSITION_OPEN:
                position = request["position"]
                row = Position(
                    id=position["id"],
                    account=FLOOR_ACCOUNT,
                    instrument=position["instrument"],
                    side=PositionSide(position["side"]),
                    qty=parse_fixed(position["qty"]),
                    entry_price=parse_fixed(position["price"]),
                    opened_ts=time.time_ns(),
                )
                await connection.send(
                    encode_position_ack(request.get("id"), Op.POSITION_OPEN, row), text=True
                )
            else:
                reply = {"type": "ack", "id": request.get("id"), "op": request.get("op")}
                await connection.send(orjson.dumps(reply), text=True)

    async def start(self) -> None:
        self._server = await serve(
            self._answer,
            "127.0.0.1",
            0,
            compression=None,
            max_size=self._limits.max_frame_bytes,
            write_limit=self._limits.write_limit,
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()


LocalOrderServer = _MarketcastOrders | LeanOrderServer | _WebsocketFloor
"""An order server run in this process: ``start()``, then ``url``; ``stop()``."""


def local_order_server(spec: OrderServerSpec) -> LocalOrderServer:
    """The server ``spec`` names, to run in this process (not started yet)."""
    match spec.kind:
        case OrderServerKind.MARKETCAST:
            return _MarketcastOrders(spec)
        case OrderServerKind.LEAN:
            return LeanOrderServer(spec.secret, spec.instruments)
        case OrderServerKind.WEBSOCKET_FLOOR:
            return _WebsocketFloor(spec)


class _OrderServerSide:
    """The child side: one server under test; its CPU time on request, and marketcast's
    own time per op (its ``position_op`` stage) over the same window."""

    def __init__(self) -> None:
        self._server: LocalOrderServer | None = None
        self._cpu = CpuClock()

    async def handle(self, command: Command) -> Command:
        match command:
            case ("start", OrderServerSpec() as spec):
                server = self._server = local_order_server(spec)
                await server.start()
                return ("started", server.url)
            case ("window",):
                self._cpu.start()
                if self._server is not None:
                    self._server.ops.start()
                return ("window",)
            case ("measure",):
                return ("measured", self._cpu.used())
            case ("ops",):
                return ("ops", None if self._server is None else self._server.ops.summary())
            case ("exit",):
                if self._server is not None:
                    await self._server.stop()
                    self._server = None
                return ("stopped",)
        raise ValueError(f"unknown command {command!r}")


def _server_main(pipe: Connection) -> None:
    serve_commands(pipe, _OrderServerSide().handle)


class OrderServer(Protocol):
    url: str

    def window(self) -> None:
        """Start a CPU measurement window."""
        ...

    def measure(self) -> CpuTimes:
        """CPU the server process (a cluster: its edge) used since ``window``."""
        ...

    def measure_shard(self) -> CpuTimes | None:
        """CPU the positions shard used since ``window`` (``None``: none)."""
        ...

    def server_ops(self) -> Summary | None:
        """The server's own time per op since ``window``, from its ``position_op`` stage
        (op submitted -> its answer queued); ``None`` where it is not read."""
        ...

    def shard_ops(self) -> Summary | None:
        """The positions shard's own time per op since ``window``, from its
        ``position_op`` stage (op in from the bus -> its answer published); ``None``: no
        shard."""
        ...


class OrderServerProcess(HelperProcess):
    """A fresh process running one order server (blocking calls)."""

    def __init__(self, spec: OrderServerSpec) -> None:
        self.spec = spec
        super().__init__(_server_main, "start", spec)
        _, self.url = self.started

    def window(self) -> None:
        """Start a CPU measurement window."""
        self._agent.ask("window")

    def measure(self) -> CpuTimes:
        """CPU the server process used since ``window``."""
        used = self._agent.ask("measure")[1]
        assert isinstance(used, CpuTimes)
        return used

    def measure_shard(self) -> CpuTimes | None:
        return None

    def server_ops(self) -> Summary | None:
        summary: Summary | None = self._agent.ask("ops")[1]
        return summary

    def shard_ops(self) -> Summary | None:
        return None


class ClusterOrderServer:
    """An edge, a positions shard and an ingest on the bus at ``bus_url`` (subjects under
    ``prefix``), each in a fresh process (blocking calls). ``directory`` holds the
    shard's SQLite file."""

    def __init__(self, spec: OrderServerSpec, bus_url: str, prefix: str, directory: Path) -> None:
        count = len(spec.instruments)
        if tuple(instrument_names(count)) != spec.instruments:
            raise ValueError("a cluster's instruments are the bench's: instrument_names(n)")
        settings = order_settings(spec, directory)
        connections = spec.connections + 100
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                NodeProcess(NodeSpec("ingest", bus_url, prefix, count, connections))
            )
            self._shard = stack.enter_context(
                NodeProcess(NodeSpec("positions", bus_url, prefix, count, connections, settings))
            )
            self._edge = stack.enter_context(
                NodeProcess(NodeSpec("edge", bus_url, prefix, count, connections, settings))
            )
            self._nodes = stack.pop_all()
        self.url = self._edge.url

    def window(self) -> None:
        self._edge.window()
        self._shard.window()

    def measure(self) -> CpuTimes:
        return self._edge.measure()[1]

    def measure_shard(self) -> CpuTimes | None:
        return self._shard.measure()[1]

    def server_ops(self) -> Summary | None:
        return self._edge.ops()

    def shard_ops(self) -> Summary | None:
        return self._shard.ops()

    def exit(self) -> None:
        self._nodes.close()

    def __enter__(self) -> ClusterOrderServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.exit()
