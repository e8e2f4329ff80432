"""Subscribers in another process: many lean websocket clients on one asyncio loop.

The fan-out and connection scenarios measure the server, so the clients must cost as
little as possible: each is an ``asyncio.Protocol`` speaking just enough RFC 6455 (the
opening handshake, unmasked server frames, masked client frames, ping -> pong, close)
to subscribe and count what arrives, about 1-2 µs of client CPU per frame where the
websockets client costs tens. The process reports its own CPU time so a report can
show which side was the bottleneck.

Latency: each chunk read from a socket is stamped with ``time.time_ns()`` on arrival;
a sampled frame (every frame unless ``sample_every`` > 1) is decoded and each message
in it gives ``arrival - ts_send`` (publish) and ``arrival - ts_recv`` (end to end) in
nanoseconds; both servers stamp the same fields, the clock is the same machine's.

Every change (profit): a conflating server sends only the newest state of a key, so
``arrival - origin`` is the age of the newest change a message reflects, not the delay
of every change (an older change of the key that the message also answers waited
longer). With ``change_interval_ns`` (the publisher changes each key exactly that often,
stamping ``origin`` with the change's due time), the first ``trackers`` clients decode
every frame and, per key, record each change since the last one they saw as answered on
this arrival: ``arrival - due`` for every due time in (last seen, newest].

Parent side: ``SubscriberPool`` spawns the process (``bench.agent``) and drives it: connect
N clients, start/stop a measurement window, collect counts and HDR histograms, close.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import cast
from urllib.parse import urlsplit

import orjson
from hdrh.histogram import HdrHistogram

from bench.agent import Agent, Command, serve_commands
from bench.report import latency_histogram, rss_bytes

_KEY = base64.b64encode(os.urandom(16))
_OP_TEXT, _OP_CLOSE, _OP_PING, _OP_PONG = 0x1, 0x8, 0x9, 0xA
CONNECTS_IN_FLIGHT = 64
"""Handshakes in progress at once (the server's accept backlog is 100)."""


@dataclass(frozen=True, slots=True)
class PoolSpec:
    url: str
    count: int
    requests: tuple[tuple[bytes, ...], ...] = ()
    """Client i sends ``requests[i % len(requests)]`` once connected and is ready when as
    many frames (the replies) came back; none: ready at the handshake (raw broadcast)."""
    sample_every: int = 1
    """Decode one frame in this many (over all clients) for latency; every frame is
    counted."""
    marker: bytes = b'"ts_send"'
    """Counted occurrences in a frame = messages (one per message)."""
    origin: str = "ts_recv"
    """Field whose value (ns) is the moment a message's change was published; the
    end-to-end latency is arrival minus it (messages without it are not sampled)."""
    change_interval_ns: int = 0
    """Every key changes exactly this often (0: unknown, no per-change delays)."""
    change_key: str = "instrument"
    trackers: int = 0
    """Clients that decode every frame for per-change delays (needs the interval)."""


@dataclass(frozen=True, slots=True)
class WindowReport:
    """What the clients received during one measurement window."""

    seconds: float
    frames: int
    messages: int
    publish: HdrHistogram
    end_to_end: HdrHistogram
    changes: HdrHistogram
    """Delay of every change until the first message that reflects it (trackers only)."""
    cpu_seconds: float
    """CPU time the subscriber process used during the window (all its threads)."""
    closed: int
    """Clients whose connection had closed by the end of the window."""


class _Stats:
    __slots__ = ("measuring", "frames", "messages", "publish", "end_to_end", "changes", "closed")

    def __init__(self) -> None:
        self.measuring = False
        self.frames = 0
        self.messages = 0
        self.publish = latency_histogram()
        self.end_to_end = latency_histogram()
        self.changes = latency_histogram()
        self.closed = 0

    def start_window(self) -> None:
        self.frames = self.messages = 0
        self.publish.reset()
        self.end_to_end.reset()
        self.changes.reset()
        self.measuring = True


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask). Only small control/request payloads."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    body = bytes(byte ^ mask[i & 3] for i, byte in enumerate(payload))
    return header + mask + body


class LeanSubscriber(asyncio.Protocol):
    """One websocket client that counts (and samples) the text frames it receives."""

    def __init__(
        self,
        host: str,
        path: str,
        spec: PoolSpec,
        requests: tuple[bytes, ...],
        stats: _Stats,
        *,
        tracker: bool = False,
    ) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._spec = spec
        self._requests = requests
        self._replies_due = len(requests)
        self._stats = stats
        self._last_seen: dict[str, int] | None = {} if tracker else None
        """A tracker's newest ``origin`` seen per key."""
        self._buffer = bytearray()
        self._open = False
        self._transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def data_received(self, data: bytes) -> None:
        arrival = time.time_ns()
        buffer = self._buffer
        buffer += data
        if not self._open and not self._handshake():
            return
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > size:
                break
            opcode = buffer[pos] & 0x0F
            payload = bytes(buffer[pos + header : end])
            pos = end
            if opcode == _OP_TEXT:
                self._text(payload, arrival)
            elif opcode == _OP_PING:
                self._send(_masked_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                self._send(_masked_frame(_OP_CLOSE, payload[:2]))
                if self._transport is not None:
                    self._transport.close()
        del buffer[:pos]

    def start_window(self) -> None:
        """Forget the keys seen before the window: the publisher may have paused between
        windows, and a gap must not count as changes that never happened."""
        if self._last_seen is not None:
            self._last_seen.clear()

    def _handshake(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        status = bytes(buffer[:end]).split(b"\r\n", 1)[0]
        del buffer[: end + 4]
        if b" 101 " not in status:
            self.ready.set_exception(ConnectionError(f"handshake refused: {status!r}"))
            if self._transport is not None:
                self._transport.close()
            return False
        self._open = True
        if not self._requests:
            self.ready.set_result(None)
        for request in self._requests:
            self._send(_masked_frame(_OP_TEXT, request))
        return True

    def _text(self, payload: bytes, arrival: int) -> None:
        if self._replies_due:
            self._replies_due -= 1
            if not self._replies_due:
                self.ready.set_result(None)
            return
        stats = self._stats
        if not stats.measuring:
            return
        spec = self._spec
        stats.frames += 1
        stats.messages += payload.count(spec.marker)
        sampled = not stats.frames % spec.sample_every  # one in sample_every, all clients
        if not sampled and self._last_seen is None:
            return
        decoded = orjson.loads(payload)
        messages = decoded if isinstance(decoded, list) else (decoded,)
        if self._last_seen is not None:
            self._track(messages, arrival)
        if not sampled:
            return
        # The messages of one publish burst share their timestamps: record each distinct
        # pair once with its count (hdrh's record_value is pure Python, ~2 µs a call).
        stamps: dict[tuple[int, int], int] = {}
        origin = spec.origin
        for message in messages:
            if origin in message:
                key = (message["ts_send"], message[origin])
                stamps[key] = stamps.get(key, 0) + 1
        for (ts_send, published), count in stamps.items():
            stats.publish.record_value(max(1, arrival - ts_send), count)
            stats.end_to_end.record_value(max(1, arrival - published), count)

    def _track(self, messages: list[dict[str, object]] | tuple[object, ...], arrival: int) -> None:
        """Record the delay of every change this arrival answers first (module docstring)."""
        spec, last_seen = self._spec, self._last_seen
        assert last_seen is not None
        newest: dict[str, int] = {}
        for message in messages:
            if isinstance(message, dict):
                key, stamp = message.get(spec.change_key), message.get(spec.origin)
                if isinstance(key, str) and isinstance(stamp, int):
                    newest[key] = max(stamp, newest.get(key, stamp))
        interval, changes = spec.change_interval_ns, self._stats.changes
        for key, stamp in newest.items():
            last = last_seen.get(key)
            if last is not None and stamp <= last:
                continue
            last_seen[key] = stamp
            if last is None:
                continue  # the first message of a key: nothing to compare with
            due = stamp
            while due > last + interval // 2:
                changes.record_value(max(1, arrival - due))
                due -= interval

    def _send(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._send(_masked_frame(_OP_CLOSE, (1000).to_bytes(2, "big")))
            self._transport.close()


async def _connect_all(spec: PoolSpec, stats: _Stats) -> list[LeanSubscriber]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(spec.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    clients: list[LeanSubscriber] = []

    async def one(index: int) -> None:
        requests = spec.requests[index % len(spec.requests)] if spec.requests else ()
        tracker = index < spec.trackers and spec.change_interval_ns > 0
        async with gate:
            client = LeanSubscriber(f"{host}:{port}", path, spec, requests, stats, tracker=tracker)
            await loop.create_connection(lambda: client, host, port)
            await client.ready
            clients.append(client)

    async with asyncio.TaskGroup() as tasks:
        for index in range(spec.count):
            tasks.create_task(one(index))
    return clients


class _Subscribers:
    """The child side: the clients and their counters, one command at a time."""

    def __init__(self) -> None:
        self._stats = _Stats()
        self._clients: list[LeanSubscriber] = []
        self._window_started = 0.0
        self._cpu_started = 0.0

    async def handle(self, command: Command) -> Command:
        match command:
            case ("connect", PoolSpec() as spec):
                self._stats = _Stats()
                self._clients = await _connect_all(spec, self._stats)
                return ("ready", len(self._clients), rss_bytes())
            case ("start",):
                self._stats.start_window()
                for client in self._clients:
                    client.start_window()
                self._window_started = time.perf_counter()
                self._cpu_started = time.process_time()
                return ("started",)
            case ("stop",):
                stats = self._stats
                stats.measuring = False
                return (
                    "window",
                    time.perf_counter() - self._window_started,
                    stats.frames,
                    stats.messages,
                    stats.publish.encode(),
                    stats.end_to_end.encode(),
                    stats.changes.encode(),
                    time.process_time() - self._cpu_started,
                    stats.closed,
                )
            case ("close",) | ("exit",):
                for client in self._clients:
                    client.close()
                self._clients = []
                await asyncio.sleep(0.1)
                return ("closed",)
        raise ValueError(f"unknown command {command!r}")


def _child_main(pipe: Connection) -> None:
    serve_commands(pipe, _Subscribers().handle)


class SubscriberPool:
    """The parent's handle on the subscriber process (blocking calls)."""

    def __init__(self) -> None:
        self._agent = Agent(_child_main)

    def connect(self, spec: PoolSpec) -> int:
        """Open ``spec.count`` clients and wait until all are subscribed; returns the
        subscriber process's RSS in bytes."""
        _, _, rss = self._agent.ask("connect", spec)
        return int(rss)

    def start(self) -> None:
        self._agent.ask("start")

    def stop(self) -> WindowReport:
        reply = self._agent.ask("stop")
        _, seconds, frames, messages, publish, end_to_end, changes, cpu, closed = reply
        return WindowReport(
            seconds=seconds,
            frames=frames,
            messages=messages,
            publish=_decoded(publish),
            end_to_end=_decoded(end_to_end),
            changes=_decoded(changes),
            cpu_seconds=cpu,
            closed=closed,
        )

    def close_clients(self) -> None:
        self._agent.ask("close")

    def exit(self) -> None:
        self._agent.exit()

    def __enter__(self) -> SubscriberPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.exit()


def _decoded(encoded: bytes | str) -> HdrHistogram:
    histogram = latency_histogram()
    histogram.decode_and_add(encoded)
    return histogram
