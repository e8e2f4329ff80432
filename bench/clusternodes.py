"""The nodes of a cluster run, each in a fresh process of its own: an ingest that
publishes the bench's synthetic BBO changes through the bus, edges that serve them, and
positions shards that edges route position ops to.

- ingest: ``app.runtime.serve`` with ``[node].role = "ingest"`` (as ``marketcast run
  --role ingest`` wires it: storage, the bus publisher, its HTTP routes), no venues;
  the bench's ``Publisher`` writes the changes into the node's feed sink (the bus
  publisher, which also keeps the local registry), as a feed would.
- edge: ``app.roles.serve_edge`` (``marketcast run --role edge``): the bus in, the same
  subscription server out; position ops go to the owning shard.
- positions: ``app.positions_role.serve_shard`` (``marketcast run --role positions``):
  shard 0 of ``[bus].shards``, its storage, position book and profit engine.

An edge or a shard is ready once every one of the spec's instruments reached it over
the bus (from the ingest, which adds them as live), so position ops on them validate.

Each process answers ``window`` / ``measure`` with its own CPU time (``bench.cpuclock``:
all its threads, and its event loop's alone), so a report can give the CPU of an edge
per delivered message; an edge and a shard answer ``ops`` with their own time per
position op over the same window (``position_op``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import orjson

from app.positions_role import RunningShard, serve_shard
from app.roles import EdgeServer, serve_edge
from app.runtime import RunningServer
from app.runtime import serve as run_server
from app.settings import (
    AuthSettings,
    BusSettings,
    NodeSettings,
    ServerSettings,
    Settings,
    StorageSettings,
)
from bench.agent import Command, HelperProcess, serve_commands, started
from bench.cpuclock import CpuClock
from bench.servers import PERIOD, BboSource, Publisher, instrument_names
from bench.stagewindow import StageWindow
from book.registry import BookRegistry
from book.sink import FeedSink
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from publish.client import ServerLimits
from publish.metrics.cpu import CpuTimes
from publish.metrics.hdr import Summary
from publish.metrics.recorder import Stage


@dataclass(frozen=True, slots=True)
class NodeSpec:
    role: str
    """``ingest``, ``edge`` or ``positions``."""
    bus_url: str
    prefix: str
    """Subject prefix shared by the ingest and its edges (one cluster per prefix)."""
    instruments: int = 100
    max_connections: int = 20_000
    settings: Settings | None = None
    """The node's settings but ``[node]`` and ``[bus]`` (default: ``node_settings``)."""


class SinkServer:
    """The ``bench.servers.BenchServer`` side the ``Publisher`` needs, over a feed sink."""

    def __init__(self, sink: FeedSink, url: str) -> None:
        self._sink = sink
        self.url = url

    def publish(self, changes: list[BookSnapshot]) -> None:
        publish = self._sink.publish
        for snapshot in changes:
            publish(snapshot)


def node_settings(spec: NodeSpec, directory: Path) -> Settings:
    """``spec.settings`` (default: a bench server with SQLite in ``directory``) placed on
    the spec's bus in the spec's role."""
    settings = spec.settings or Settings(
        server=ServerSettings(
            host="127.0.0.1",
            port=0,
            limits=ServerLimits(max_connections=spec.max_connections),
        ),
        storage=StorageSettings(backend="sqlite", path=str(directory / "ingest.db")),
        auth=AuthSettings(secret=os.urandom(16).hex()),
    )
    return replace(
        settings,
        node=NodeSettings(role=spec.role),
        bus=BusSettings(url=spec.bus_url, prefix=spec.prefix),
    )


class _NodeSide:
    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._directory = tempfile.TemporaryDirectory(prefix="marketcast-bench-node-")
        self._server: SinkServer | None = None
        self._source: BboSource | None = None
        self._publisher: Publisher | None = None
        self._window = (0.0, 0)
        """When the window started (``perf_counter``) and the changes offered by then."""
        self._cpu = CpuClock()
        self._ops = StageWindow()
        """An edge's or a shard's ``position_op`` stage."""

    async def handle(self, command: Command) -> Command:
        match command:
            case ("start", NodeSpec() as spec):
                return ("started", await self._start(spec))
            case ("drive", float(rate)):
                assert self._server is not None and self._source is not None
                self._publisher = Publisher(
                    self._server,  # type: ignore[arg-type]
                    self._source,
                    rate=rate,
                    burst_cap=max(1, int(rate * PERIOD * 10)),
                )
                self._publisher.start()
                return ("driving",)
            case ("halt",):
                if self._publisher is not None:
                    await self._publisher.stop()
                    self._publisher = None
                return ("halted",)
            case ("window",):
                offered = self._publisher.offered if self._publisher else 0
                self._window = (time.perf_counter(), offered)
                self._cpu.start()
                self._ops.start()
                return ("window",)
            case ("measure",):
                started, offered = self._window
                now_offered = self._publisher.offered if self._publisher else 0
                return (
                    "measured",
                    time.perf_counter() - started,
                    self._cpu.used(),
                    now_offered - offered,
                )
            case ("ops",):
                return ("ops", self._ops.summary())
            case ("exit",):
                if self._publisher is not None:
                    await self._publisher.stop()
                task, self._task = self._task, None
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self._directory.cleanup()
                return ("stopped",)
        raise ValueError(f"unknown command {command!r}")

    async def _start(self, spec: NodeSpec) -> str:
        settings = node_settings(spec, Path(self._directory.name))
        loop = asyncio.get_running_loop()
        names = instrument_names(spec.instruments)
        if spec.role == "edge":
            edge_ready: asyncio.Future[EdgeServer] = loop.create_future()
            self._task = loop.create_task(serve_edge(settings, on_ready=edge_ready.set_result))
            edge = await started(edge_ready, self._task)
            self._ops.watch(edge.metrics.recorder.stages[Stage.POSITION_OP])
            await _known(edge.registry, names)
            return edge.url
        if spec.role == "positions":
            shard_ready: asyncio.Future[RunningShard] = loop.create_future()
            self._task = loop.create_task(serve_shard(settings, on_ready=shard_ready.set_result))
            shard = await started(shard_ready, self._task)
            self._ops.watch(shard.metrics.recorder.stages[Stage.POSITION_OP])
            await _known(shard.registry, names)
            return ""
        ingest_ready: asyncio.Future[RunningServer] = loop.create_future()
        self._task = loop.create_task(run_server(settings, on_ready=ingest_ready.set_result))
        running = await started(ingest_ready, self._task)
        assert running.bus is not None
        sink: FeedSink = running.bus.publisher
        now = time.time_ns()
        for name in names:
            sink.add_instrument(name, now)
            sink.set_status(InstrumentStatus(name, InstrumentState.LIVE, "bench", now))
        self._server = SinkServer(sink, running.url)
        self._source = BboSource(names)
        return running.url


KNOWN_TIMEOUT = 30.0
"""Longest wait for a node to learn the instruments from the bus."""


async def _known(registry: BookRegistry, names: list[str]) -> None:
    """Until every one of ``names`` has a state in ``registry`` (from the bus)."""
    for _ in range(int(KNOWN_TIMEOUT / 0.02)):
        if all(registry.status(name) is not None for name in names):
            return
        await asyncio.sleep(0.02)
    missing = [name for name in names if registry.status(name) is None]
    raise RuntimeError(f"{len(missing)} instruments never reached the node: {missing[:3]}")


def _node_main(pipe: Connection) -> None:
    serve_commands(pipe, _NodeSide().handle)


class NodeProcess(HelperProcess):
    """A fresh process running one cluster node (blocking calls)."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        super().__init__(_node_main, "start", spec)
        self.url: str = self.started[1]

    @property
    def subscribe_all(self) -> bytes:
        names = instrument_names(self.spec.instruments)
        return orjson.dumps({"op": "subscribe", "id": 1, "channel": "bbo", "instruments": names})

    def drive(self, rate: float) -> None:
        """Ingest: publish ``rate`` changes per second."""
        self._agent.ask("drive", float(rate))

    def halt(self) -> None:
        self._agent.ask("halt")

    def window(self) -> None:
        self._agent.ask("window")

    def ops(self) -> Summary | None:
        """The node's ``position_op`` samples since ``window`` (an ingest: ``None``)."""
        summary: Summary | None = self._agent.ask("ops")[1]
        return summary

    def measure(self) -> tuple[float, CpuTimes, int]:
        """Seconds, CPU used and changes published since ``window``."""
        _, seconds, cpu, offered = self._agent.ask("measure")
        assert isinstance(cpu, CpuTimes)
        return float(seconds), cpu, int(offered)
