"""Compression: bytes on the wire and server CPU per delivery, compressed or not.

Four servers, each in a fresh process of its own, publish the same synthetic BBO
changes (``bench.servers.BboSource`` at ``rate`` changes/s, round-robin over the
instruments) to the same subscribers, every one following every instrument:

- marketcast, plain frames (``/ws``);
- marketcast with ``?compress=1``: permessage-deflate without context takeover, each
  frame compressed once per publish tick and the same bytes written to every
  subscriber (``publish.wire``);
- a bare ``websockets`` server broadcasting each change (``websockets.broadcast``),
  uncompressed;
- the same server with websockets' own compression (``compression="deflate"``: one
  compressor per connection, with context takeover), which compresses every message
  once per subscriber.

The subscribers run in the bench's process, each a ``websockets`` client that offers
permessage-deflate (as browsers do) and counts the raw bytes its socket receives. After
a warm-up, one window of ``seconds``: deliveries = messages received by all
subscribers, bytes per delivery = socket bytes received / deliveries (frame headers
included), CPU per delivery = the server process's CPU time in the window / deliveries
(publisher included: the same for all four).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.agent import Agent, Command, serve_commands
from bench.report import Progress, ScenarioResult, Table, number, ratio
from bench.servers import (
    BboSource,
    BenchServer,
    MarketcastServer,
    Publisher,
    RawBroadcastServer,
    instrument_names,
)

WARM_UP_SECONDS = 0.5
FULL_RATE = 400.0
"""Changes/s of a full run: 80,000 deliveries/s to 200 subscribers, which the clients
(websockets, all in the bench's process) read as they come. At 1,000/s (200,000
deliveries/s) they read 105,000-195,000/s, and what they had not read piled up in their
queues: 13 GB in one run, and the kernel's OOM killer ended another."""
CLIENT_QUEUE = 1024
"""Messages a client holds unread before it stops reading its socket (websockets'
``max_queue``): a bound on the bench's memory if the clients fall behind anyway."""


class Contender(StrEnum):
    MARKETCAST = "marketcast"
    MARKETCAST_COMPRESSED = "marketcast ?compress=1"
    WEBSOCKETS = "websockets broadcast"
    WEBSOCKETS_DEFLATE = "websockets broadcast, per-connection deflate"


@dataclass(frozen=True, slots=True)
class CompressionOptions:
    subscribers: int
    instruments: int
    rate: float
    """BBO changes published per second (each goes to every subscriber)."""
    seconds: float

    @classmethod
    def quick(cls) -> CompressionOptions:
        return cls(subscribers=20, instruments=5, rate=500.0, seconds=1.0)

    @classmethod
    def full(cls) -> CompressionOptions:
        return cls(subscribers=200, instruments=20, rate=FULL_RATE, seconds=5.0)


@dataclass(frozen=True, slots=True)
class Measured:
    contender: Contender
    seconds: float
    deliveries: int
    wire_bytes: int
    cpu_seconds: float

    @property
    def bytes_per_delivery(self) -> float:
        return self.wire_bytes / self.deliveries if self.deliveries else 0.0

    @property
    def cpu_ns_per_delivery(self) -> float:
        return self.cpu_seconds * 1e9 / self.deliveries if self.deliveries else 0.0


class _ServerSide:
    """The child: one server under test and its publisher."""

    def __init__(self) -> None:
        self._server: BenchServer | None = None
        self._names: list[str] = []
        self._publisher: Publisher | None = None
        self._cpu = 0.0

    async def handle(self, command: Command) -> Command:
        match command:
            case ("start", Contender() as contender, int(instruments)):
                names = instrument_names(instruments)
                server: BenchServer
                if contender in (Contender.MARKETCAST, Contender.MARKETCAST_COMPRESSED):
                    server = MarketcastServer(names, batched=False, max_connections=20_000)
                else:
                    deflate = contender is Contender.WEBSOCKETS_DEFLATE
                    server = RawBroadcastServer(batched=False, deflate=deflate)
                await server.start()
                self._server, self._names = server, names
                url = server.url
                if contender is Contender.MARKETCAST_COMPRESSED:
                    url += "?compress=1"
                return ("started", url, server.subscribe_frame())
            case ("drive", float(rate)):
                assert self._server is not None
                names = self._names
                self._publisher = Publisher(
                    self._server, BboSource(names), rate=rate, burst_cap=len(names)
                )
                self._publisher.start()
                return ("driving",)
            case ("window",):
                self._cpu = time.process_time()
                return ("window",)
            case ("measure",):
                return ("measured", time.process_time() - self._cpu)
            case ("exit",):
                if self._publisher is not None:
                    await self._publisher.stop()
                if self._server is not None:
                    await self._server.stop()
                return ("stopped",)
        raise ValueError(f"unknown command {command!r}")


def _server_main(pipe: Connection) -> None:
    serve_commands(pipe, _ServerSide().handle)


class CountingConnection(ClientConnection):
    """A client connection that counts the bytes its socket received."""

    received_bytes = 0

    def data_received(self, data: bytes) -> None:
        self.received_bytes += len(data)
        super().data_received(data)


async def _read(ws: ClientConnection, counts: list[int], index: int) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            counts[index] += 1


async def _measure(
    agent: Agent, contender: Contender, options: CompressionOptions, progress: Progress
) -> Measured:
    _, url, subscribe = await asyncio.to_thread(agent.ask, "start", contender, options.instruments)
    async with contextlib.AsyncExitStack() as stack:
        clients: list[CountingConnection] = []
        for _ in range(options.subscribers):
            ws = await stack.enter_async_context(
                connect(url, create_connection=CountingConnection, max_queue=CLIENT_QUEUE)
            )
            assert isinstance(ws, CountingConnection)
            clients.append(ws)
        counts = [0] * len(clients)
        if subscribe is not None:
            for ws in clients:
                await ws.send(subscribe.decode())
            for ws in clients:
                reply = orjson.loads(await ws.recv())
                assert reply["type"] == "ack", reply
        readers = [
            asyncio.create_task(_read(ws, counts, index)) for index, ws in enumerate(clients)
        ]
        progress.step(f"{contender.value}: {options.subscribers} subscribers")
        await asyncio.to_thread(agent.ask, "drive", options.rate)
        await asyncio.sleep(WARM_UP_SECONDS)
        await asyncio.to_thread(agent.ask, "window")
        started = time.perf_counter()
        bytes_before = sum(ws.received_bytes for ws in clients)
        count_before = sum(counts)
        await asyncio.sleep(options.seconds)
        _, cpu_seconds = await asyncio.to_thread(agent.ask, "measure")
        seconds = time.perf_counter() - started
        wire_bytes = sum(ws.received_bytes for ws in clients) - bytes_before
        deliveries = sum(counts) - count_before
        for reader in readers:
            reader.cancel()
    return Measured(contender, seconds, deliveries, wire_bytes, cpu_seconds)


def measure_all(options: CompressionOptions, progress: Progress) -> list[Measured]:
    results = []
    for contender in Contender:
        with Agent(_server_main) as agent:
            results.append(asyncio.run(_measure(agent, contender, options, progress)))
    return results


def run(options: CompressionOptions, progress: Progress) -> ScenarioResult:
    progress.scenario("compression")
    measured = measure_all(options, progress)
    progress.done()
    result = ScenarioResult(
        key="compression",
        title="Compression: bytes on the wire and server CPU per delivery",
        how=(
            f"{options.subscribers} subscribers on loopback (websockets clients offering "
            f"permessage-deflate), each following {options.instruments} instruments; "
            f"{number(options.rate)} BBO changes/s published, so each change is one "
            f"delivery per subscriber; one {options.seconds:g} s window after "
            f"{WARM_UP_SECONDS:g} s of warm-up, each server in a fresh process. Bytes = "
            "what the subscribers' sockets received (frame headers included) / deliveries; "
            "CPU = the server process's CPU time in the window (publisher included) / "
            "deliveries."
        ),
    )
    plain = {m.contender: m for m in measured}
    rows = []
    for m in measured:
        base = plain[
            Contender.MARKETCAST
            if m.contender in (Contender.MARKETCAST, Contender.MARKETCAST_COMPRESSED)
            else Contender.WEBSOCKETS
        ]
        delivered = m.deliveries / m.seconds if m.seconds else 0.0
        rows.append(
            (
                m.contender.value,
                number(delivered),
                ratio(delivered, options.rate * options.subscribers),
                f"{m.bytes_per_delivery:.1f}",
                "-" if m is base else ratio(m.bytes_per_delivery, base.bytes_per_delivery),
                f"{m.cpu_ns_per_delivery / 1000:.2f}",
                "-" if m is base else ratio(m.cpu_ns_per_delivery, base.cpu_ns_per_delivery),
            )
        )
        key = m.contender.name.lower()
        result.figures[f"{key}_bytes_per_delivery"] = m.bytes_per_delivery
        result.figures[f"{key}_cpu_ns_per_delivery"] = m.cpu_ns_per_delivery
        result.figures[f"{key}_deliveries"] = m.deliveries
    result.tables.append(
        Table(
            "per delivery",
            (
                "server",
                "deliveries/s",
                "of offered",
                "bytes",
                "bytes vs uncompressed",
                "server CPU µs",
                "CPU vs uncompressed",
            ),
            rows,
        )
    )
    return result
