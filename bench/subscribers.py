"""Subscribers in another process: many lean websocket clients on one asyncio loop.

The fan-out and connection scenarios measure the server, so the clients must cost as
little as possible: each is a ``bench.leanws.LeanWebsocket`` that subscribes and counts
what arrives. The process reports its own CPU time so a report can show which side was
the bottleneck.

Latency: each read from a socket is stamped with the kernel's receive stamp of the
bytes it returns (``SO_TIMESTAMPNS``, see ``bench.leanws``): when they reached this
process's socket, not when its loop got round to them, which at thousands of
connections on one core is tens of ms later for the last of them (``time.time_ns()``
at the read where the kernel gives no stamp; ``WindowReport`` counts both); a sampled
frame (every frame unless ``sample_every`` > 1) is decoded and each message
in it gives ``arrival - ts_send`` (publish) and ``arrival - ts_recv`` (end to end) in
nanoseconds; both servers stamp the same fields, the clock is the same machine's
CLOCK_REALTIME. A read that returns several frames stamps them all with the arrival of
its newest bytes: an earlier frame looks later than it was, never earlier. With
``own_stamps_only`` (for servers that send every frame with a write of its own) only the
frame that ends a read is timed: an earlier one would carry a newer frame's stamp,
overstated by as long as this process was behind with that socket; such frames are
counted (``untimed_frames``), not timed.

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
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

import orjson
from hdrh.histogram import HdrHistogram

from bench.agent import Command, HelperProcess, serve_commands
from bench.leanws import LeanWebsocket, ReadCounts, open_connections
from bench.report import latency_histogram, rss_bytes


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
    own_stamps_only: bool = False
    """Sample for latency only frames whose read stamp is their own (the frame that ends
    a read, ``LeanWebsocket.on_text``): for servers that write every frame on its own
    (``batch=1``), where two frames in one read came in two writes, and the earlier
    one's stamp is the later write's."""


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
    kernel_reads: int = 0
    """Reads in the window whose arrival is the kernel's receive stamp."""
    fallback_reads: int = 0
    """Reads in the window stamped with ``time.time_ns()`` when read (no kernel stamp)."""
    untimed_frames: int = 0
    """Frames counted but not timed: a newer frame came in the same read, and the
    pool times only frames with their own stamp (``PoolSpec.own_stamps_only``)."""


class _Stats:
    __slots__ = (
        "measuring",
        "frames",
        "untimed",
        "messages",
        "publish",
        "end_to_end",
        "changes",
        "closed",
        "reads",
    )

    def __init__(self) -> None:
        self.measuring = False
        self.frames = 0
        self.untimed = 0
        self.messages = 0
        self.publish = latency_histogram()
        self.end_to_end = latency_histogram()
        self.changes = latency_histogram()
        self.closed = 0
        self.reads = ReadCounts()

    def start_window(self) -> None:
        self.frames = self.untimed = self.messages = 0
        self.reads.reset()
        self.publish.reset()
        self.end_to_end.reset()
        self.changes.reset()
        self.measuring = True


class LeanSubscriber(LeanWebsocket):
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
        super().__init__(host, path)
        self._spec = spec
        self._requests = requests
        self._replies_due = len(requests)
        self._stats = stats
        self._last_seen: dict[str, int] | None = {} if tracker else None
        """A tracker's newest ``origin`` seen per key."""

    def on_open(self) -> None:
        if not self._requests:
            self.set_ready()
        for request in self._requests:
            self.send_text(request)

    def on_text(self, payload: bytes, arrival: int, own_stamp: bool) -> None:
        self._text(payload, arrival, own_stamp)

    def on_closed(self) -> None:
        self._stats.closed += 1

    def start_window(self) -> None:
        """Forget the keys seen before the window: the publisher may have paused between
        windows, and a gap must not count as changes that never happened."""
        if self._last_seen is not None:
            self._last_seen.clear()

    def _text(self, payload: bytes, arrival: int, own_stamp: bool) -> None:
        if self._replies_due:
            self._replies_due -= 1
            if not self._replies_due:
                self.set_ready()
            return
        stats = self._stats
        if not stats.measuring:
            return
        spec = self._spec
        stats.frames += 1
        stats.messages += payload.count(spec.marker)
        sampled = not stats.frames % spec.sample_every  # one in sample_every, all clients
        if spec.own_stamps_only and not own_stamp:
            stats.untimed += 1
            sampled = False
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


async def _connect_all(spec: PoolSpec, stats: _Stats) -> list[LeanSubscriber]:
    parts = urlsplit(spec.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")

    def make(index: int) -> LeanSubscriber:
        requests = spec.requests[index % len(spec.requests)] if spec.requests else ()
        tracker = index < spec.trackers and spec.change_interval_ns > 0
        return LeanSubscriber(f"{host}:{port}", path, spec, requests, stats, tracker=tracker)

    return await open_connections(host, port, spec.count, make, stats.reads)


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
                    stats.reads.kernel,
                    stats.reads.fallback,
                    stats.untimed,
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


class SubscriberPool(HelperProcess):
    """The parent's handle on the subscriber process (blocking calls)."""

    def __init__(self) -> None:
        super().__init__(_child_main)

    def connect(self, spec: PoolSpec) -> int:
        """Open ``spec.count`` clients and wait until all are subscribed; returns the
        subscriber process's RSS in bytes."""
        _, _, rss = self._agent.ask("connect", spec)
        return int(rss)

    def start(self) -> None:
        self._agent.ask("start")

    def stop(self) -> WindowReport:
        reply = self._agent.ask("stop")
        _, seconds, frames, messages, publish, end_to_end, changes, cpu, closed, *reads = reply
        kernel_reads, fallback_reads, untimed_frames = reads
        return WindowReport(
            seconds=seconds,
            frames=frames,
            messages=messages,
            publish=_decoded(publish),
            end_to_end=_decoded(end_to_end),
            changes=_decoded(changes),
            cpu_seconds=cpu,
            closed=closed,
            kernel_reads=kernel_reads,
            fallback_reads=fallback_reads,
            untimed_frames=untimed_frames,
        )

    def close_clients(self) -> None:
        self._agent.ask("close")


def _decoded(encoded: bytes | str) -> HdrHistogram:
    histogram = latency_histogram()
    histogram.decode_and_add(encoded)
    return histogram
