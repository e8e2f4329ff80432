"""Order-entry clients in another process: many lean websocket connections sending
``position.open`` at an offered rate and timing every ack.

Each connection authenticates as an account of its own (``auth`` with a token the
parent issued), then the driver sends the offered opens per second, every millisecond,
round-robin over the connections: a new position id each (``o<n>``, unique in the
process), ``instruments`` in turn, long and short in turn. Open loop: a request is sent
when due, whatever is still unanswered; when the process falls behind by more than
``BURST_MS`` of requests the excess is not made up (``sent`` counts what really went
out, so a client that cannot offer the rate shows it).

Ack latency = arrival of the ack - the moment the request was written (``time.time_ns()``
just before the write), both on this machine's CLOCK_REALTIME. Arrival is the kernel's
receive stamp of the read that returned the ack (``SO_TIMESTAMPNS``, see
``bench.leanws``), as for the subscribers: when the ack reached the socket, not when
this process, busy with its other connections and its own sends, got round to reading
it (``time.time_ns()`` at the read where the kernel gives no stamp; ``OrderWindow``
counts both). Latencies are counted per microsecond in a dict (cheaper than an HDR
record per ack) and turned into an HDR histogram at the end of a window. Any ``error``
reply is counted by code.

Parent side: ``OrderClientPool`` spawns the process (``bench.agent``) and drives it:
connect, drive a rate, open and close a measurement window, halt, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

import orjson
from hdrh.histogram import HdrHistogram

from bench.agent import Command, HelperProcess, serve_commands
from bench.leanws import LeanWebsocket, ReadCounts, open_connections
from bench.report import latency_histogram
from publish.auth import TokenAuthority

TICK = 0.001
"""Seconds between two bursts of requests."""
BURST_MS = 50.0
"""Requests due beyond this many milliseconds' worth at once are dropped, not sent late."""
_ACK = b'{"type":"ack","id":'
"""How every ack begins (the encoders write ``type`` then ``id``)."""
OPEN_TEMPLATE = (
    b'{"op":"position.open","id":%d,"position":{"id":"o%d","instrument":"%s",'
    b'"side":"%s","qty":"0.%d","price":"43000.%d"}}'
)


def auth_requests(secret: str, connections: int) -> tuple[bytes, ...]:
    """One ``auth`` request per connection, each with a token (``secret``'s, valid a day)
    for an account of its own: ``acct-00000``, ``acct-00001``..."""
    tokens = TokenAuthority(secret.encode())
    return tuple(
        orjson.dumps({"op": "auth", "id": 0, "token": tokens.issue(f"acct-{i:05d}", ttl=86_400)})
        for i in range(connections)
    )


@dataclass(frozen=True, slots=True)
class OrderPoolSpec:
    url: str
    auth: tuple[bytes, ...]
    """One ``auth`` request per connection (a token for the connection's account)."""
    instruments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OrderWindow:
    """What the clients sent and got back during one measurement window."""

    seconds: float
    sent: int
    acked: int
    errors: dict[str, int]
    latency: HdrHistogram
    """Ack latency of every ack that arrived in the window, ns."""
    cpu_seconds: float
    closed: int
    """Connections closed by the end of the window."""
    kernel_reads: int = 0
    """Reads in the window whose arrival is the kernel's receive stamp."""
    fallback_reads: int = 0
    """Reads in the window stamped with ``time.time_ns()`` when read (no kernel stamp)."""


@dataclass(slots=True)
class _Counters:
    measuring: bool = False
    sent: int = 0
    acked: int = 0
    closed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency_us: dict[int, int] = field(default_factory=dict)
    in_flight: dict[int, int] = field(default_factory=dict)
    """Request id -> ``time.time_ns()`` when it was written."""
    reads: ReadCounts = field(default_factory=ReadCounts)


class OrderClient(LeanWebsocket):
    """One connection: authenticates, then reports each reply to the shared counters."""

    def __init__(self, host: str, path: str, auth: bytes, counters: _Counters) -> None:
        super().__init__(host, path)
        self._auth = auth
        self._counters = counters
        self._authenticated = False

    def on_open(self) -> None:
        self.send_text(self._auth)

    def on_closed(self) -> None:
        self._counters.closed += 1

    def on_text(self, payload: bytes, arrival: int, own_stamp: bool) -> None:
        if not self._authenticated:
            if payload.startswith(_ACK):
                self._authenticated = True
                self.set_ready()
            elif not self.ready.done():
                self.ready.set_exception(ConnectionError(f"auth refused: {payload[:200]!r}"))
            return
        counters = self._counters
        if payload.startswith(_ACK):
            request_id = int(payload[len(_ACK) : payload.index(b",", len(_ACK))])
            sent = counters.in_flight.pop(request_id, None)
            if sent is not None and counters.measuring:
                counters.acked += 1
                key = (arrival - sent) // 1000
                latency = counters.latency_us
                latency[key] = latency.get(key, 0) + 1
            return
        message = orjson.loads(payload)
        if isinstance(message, dict) and message.get("type") == "error":
            refused = message.get("id")
            if isinstance(refused, int):
                counters.in_flight.pop(refused, None)
            if counters.measuring:
                counters.errors[str(message.get("code"))] += 1


class _Driver:
    """The child side: the connections and the request driver, one command at a time."""

    def __init__(self) -> None:
        self._counters = _Counters()
        self._clients: list[OrderClient] = []
        self._instruments: tuple[bytes, ...] = ()
        self._next_id = 1
        self._task: asyncio.Task[None] | None = None
        self._window_started = 0.0
        self._cpu_started = 0.0

    async def handle(self, command: Command) -> Command:
        match command:
            case ("connect", OrderPoolSpec() as spec):
                await self._close()
                self._counters = _Counters()
                self._instruments = tuple(name.encode() for name in spec.instruments)
                parts = urlsplit(spec.url)
                host, port = parts.hostname or "127.0.0.1", parts.port or 80
                counters = self._counters
                self._clients = await open_connections(
                    host,
                    port,
                    len(spec.auth),
                    lambda i: OrderClient(f"{host}:{port}", parts.path, spec.auth[i], counters),
                    counters.reads,
                )
                return ("ready", len(self._clients))
            case ("drive", float(rate)):
                await self._halt()
                self._task = asyncio.get_running_loop().create_task(self._drive(rate))
                return ("driving",)
            case ("window",):
                counters = self._counters
                counters.sent = counters.acked = 0
                counters.errors.clear()
                counters.latency_us.clear()
                counters.reads.reset()
                counters.measuring = True
                self._window_started = time.perf_counter()
                self._cpu_started = time.process_time()
                return ("window",)
            case ("measure",):
                counters = self._counters
                counters.measuring = False
                return (
                    "measured",
                    time.perf_counter() - self._window_started,
                    counters.sent,
                    counters.acked,
                    dict(counters.errors),
                    sorted(counters.latency_us.items()),
                    time.process_time() - self._cpu_started,
                    counters.closed,
                    counters.reads.kernel,
                    counters.reads.fallback,
                )
            case ("halt",):
                await self._halt()
                self._counters.in_flight.clear()
                return ("halted",)
            case ("close",) | ("exit",):
                await self._close()
                return ("closed",)
        raise ValueError(f"unknown command {command!r}")

    async def _drive(self, rate: float) -> None:
        loop = asyncio.get_running_loop()
        clients, instruments = self._clients, self._instruments
        counters = self._counters
        in_flight = counters.in_flight
        burst = max(1, int(rate * BURST_MS / 1000))
        started = loop.time()
        due_total = 0
        turn = 0
        while True:
            due = int((loop.time() - started) * rate) - due_total
            if due > 0:
                due_total += due
                for _ in range(min(due, burst)):
                    n = self._next_id
                    self._next_id = n + 1
                    client = clients[turn % len(clients)]
                    turn += 1
                    side = b"buy" if n & 1 else b"sell"
                    request = OPEN_TEMPLATE % (
                        n,
                        n,
                        instruments[n % len(instruments)],
                        side,
                        1 + n % 9,
                        n % 10,
                    )
                    in_flight[n] = time.time_ns()
                    client.send_text(request)
                    if counters.measuring:
                        counters.sent += 1
            await asyncio.sleep(TICK)

    async def _halt(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close(self) -> None:
        await self._halt()
        for client in self._clients:
            client.close()
        self._clients = []
        await asyncio.sleep(0.05)


def _child_main(pipe: Connection) -> None:
    serve_commands(pipe, _Driver().handle)


class OrderClientPool(HelperProcess):
    """The parent's handle on the order-entry client process (blocking calls)."""

    def __init__(self) -> None:
        super().__init__(_child_main)

    def connect(self, spec: OrderPoolSpec) -> int:
        """Open one connection per ``spec.auth`` and authenticate each; returns how many."""
        return int(self._agent.ask("connect", spec)[1])

    def drive(self, rate: float) -> None:
        """Start sending ``rate`` opens per second."""
        self._agent.ask("drive", float(rate))

    def window(self) -> None:
        self._agent.ask("window")

    def measure(self) -> OrderWindow:
        reply = self._agent.ask("measure")
        _, seconds, sent, acked, errors, latency_us, cpu, closed, kernel, fallback = reply
        latency = latency_histogram()
        for micros, count in latency_us:
            latency.record_value(max(1, micros * 1000), count)
        return OrderWindow(seconds, sent, acked, errors, latency, cpu, closed, kernel, fallback)

    def halt(self) -> None:
        """Stop sending (requests still unanswered are forgotten)."""
        self._agent.ask("halt")

    def close_clients(self) -> None:
        self._agent.ask("close")
