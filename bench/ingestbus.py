"""Scenario 7b, ingest with the bus: what publishing to NATS costs the ingest's full path.

The same recorded Binance frames as scenario 1 (``bench.ingest``: both recordings, the
depth stream and the combined connection) go through marketcast's per-frame path
(``bench.ingest.FramePath``: ``FeedSession.receive``) into one of two sinks:

- **without the bus**: the ``BookRegistry`` (what ``role = "all"`` feeds write to);
- **with the bus**: ``bus.ingest.BusPublisher`` over the same kind of registry (what
  ``role = "ingest"`` feeds write to): the registry, then the snapshot and status kept
  as the instrument's pending value and published on NATS in the publisher's tick.

The publisher flushes in a task of its own, so both contenders run in one asyncio loop
(uvloop when installed) with the same harness: the frames are fed in chunks of
``chunk`` frames and the loop gets one turn between chunks (where the publisher's tick
runs); the clock stops at the end of the recording, after the publisher's final tick
and a NATS ``flush`` (the server has every message). The bus is real: a nats-server
the bench starts on a free loopback port, one connection (``bus.link.BusLink``) kept
up through every run of both contenders, and a subscriber in another process on the
book and status subjects, so NATS really delivers (its count is reported).

One frame per loop turn is the worst case: the publisher flushes at most once a
millisecond while busy (``bus.ingest.FLUSH_INTERVAL``), so it conflates only what
arrived within that millisecond; larger chunks also let it conflate what one turn
produced, as when frames arrive in a burst. Contenders run ``repeat`` times,
interleaved; the best run counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection

import nats
from nats.aio.client import Client

from bench.agent import Command, HelperProcess, serve_commands
from bench.ingest import RECORDINGS, FramePath, Top, View, load_views
from bench.report import Progress, ScenarioResult, Table, Target, number, ratio
from book.registry import BookRegistry
from book.sink import FeedSink
from bus.ingest import BusPublisher
from bus.link import BusLink
from bus.subjects import Subjects

BUS_TARGET = 0.85
"""The full path's messages/s with the bus as a share of without (issue 11)."""
DELIVERY_TIMEOUT = 10.0
"""Longest wait for the subscriber to receive what a run published."""
PREFIX = "benchingest"


class Sink(StrEnum):
    REGISTRY = "without the bus (registry)"
    BUS = "with the bus (BusPublisher)"


@dataclass(frozen=True, slots=True)
class IngestBusOptions:
    frames: int | None
    """Frames of each recording (``None``: all of them)."""
    repeat: int
    chunks: tuple[int, ...] = (1, 100)
    """Frames fed per loop turn; the target is judged at the first."""

    @classmethod
    def quick(cls) -> IngestBusOptions:
        return cls(frames=12_000, repeat=1)

    @classmethod
    def full(cls) -> IngestBusOptions:
        return cls(frames=None, repeat=3)


@dataclass(frozen=True, slots=True)
class BusRun:
    seconds: float
    top: Top
    published: int = 0
    dropped: int = 0
    delivered: int = 0
    """Messages the subscriber process received from this run."""


# -- the subscriber, in a process of its own ---------------------------------------------


class _ListenerSide:
    def __init__(self) -> None:
        self._client: Client | None = None
        self.received = 0
        self._wanted = 0
        self._reached = asyncio.Event()

    async def _count(self, _msg: object) -> None:
        self.received += 1
        if self.received >= self._wanted:
            self._reached.set()

    async def handle(self, command: Command) -> Command:
        match command:
            case ("start", str(url), tuple(subjects)):
                client = await nats.connect(url, name="bench-ingestbus-listener")
                self._client = client
                for subject in subjects:
                    await client.subscribe(
                        subject, cb=self._count, pending_msgs_limit=-1, pending_bytes_limit=-1
                    )
                await client.flush()
                return ("started",)
            case ("count", int(at_least), float(timeout)):
                self._wanted = at_least
                self._reached.clear()
                if self.received < at_least:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self._reached.wait()
                return ("count", self.received)
            case ("exit",):
                if self._client is not None:
                    with contextlib.suppress(Exception):  # stopping anyway
                        await self._client.close()
                    self._client = None
                return ("stopped",)
        raise ValueError(f"unknown command {command!r}")


def _listener_main(pipe: Connection) -> None:
    serve_commands(pipe, _ListenerSide().handle)


class Listener(HelperProcess):
    """A plain NATS subscriber in another process, counting what it receives."""

    def __init__(self, url: str, subjects: tuple[str, ...]) -> None:
        super().__init__(_listener_main, "start", url, subjects)

    def count(self, at_least: int, timeout: float = DELIVERY_TIMEOUT) -> int:
        """Messages received so far, once at least ``at_least`` (or ``timeout`` passed)."""
        return int(self._agent.ask("count", at_least, float(timeout))[1])


# -- the harness ------------------------------------------------------------------------


class Harness:
    """Both contenders' runs on one loop, one bus connection, one subscriber."""

    def __init__(self, link: BusLink, subjects: Subjects, listener: Listener) -> None:
        self.link = link
        self.subjects = subjects
        self.listener = listener
        self._received = 0

    async def run(self, sink: Sink, view: View, chunk: int) -> BusRun:
        registry = BookRegistry()
        publisher: BusPublisher | None = None
        task: asyncio.Task[None] | None = None
        target: FeedSink = registry
        if sink is Sink.BUS:
            publisher = BusPublisher(registry, self.link, self.subjects)
            task = asyncio.create_task(publisher.run(), name="bench:publisher")
            target = publisher
        path = FramePath(view.recording.futures, target)
        target.add_instrument(path.instrument, 0)
        try:
            await _settle(publisher)  # its first tick (state, heartbeat) is not measured
            frames = view.frames
            gc.collect()
            started = time.perf_counter()
            for start in range(0, len(frames), chunk):
                path.feed(frames[start : start + chunk])
                await asyncio.sleep(0)
            if publisher is not None:
                await _settle(publisher)
                await (await self.link.wait_connected()).flush()
            seconds = time.perf_counter() - started
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        snapshot = registry.get(path.instrument)
        top: Top = (
            (snapshot.bid, snapshot.bid_qty, snapshot.ask, snapshot.ask_qty)
            if snapshot is not None
            else (None, None, None, None)
        )
        if publisher is None:
            return BusRun(seconds, top)
        counters = publisher.counters
        expected = self._received + counters.published
        received = await asyncio.to_thread(self.listener.count, expected)
        delivered, self._received = received - self._received, received
        return BusRun(seconds, top, counters.published, counters.dropped, delivered)


async def _settle(publisher: BusPublisher | None) -> None:
    """Until the publisher has handed everything to nats-py: loop turns, as between the
    chunks (an event set on every tick would cost the hot path)."""
    while publisher is not None and not publisher.idle:  # noqa: ASYNC110
        await asyncio.sleep(0)


def _views(options: IngestBusOptions) -> Iterator[View]:
    for recording in RECORDINGS:
        yield from load_views(recording, options.frames)


async def measure(
    options: IngestBusOptions, url: str, listener: Listener, progress: Progress
) -> dict[tuple[str, str, int], dict[Sink, BusRun]]:
    """The best run of each contender, by (recording, view, chunk)."""
    subjects = Subjects(f"{PREFIX}{os.getpid()}")
    link = BusLink([url], name="bench-ingestbus")
    link_task = asyncio.create_task(link.run(), name="bench:link")
    best: dict[tuple[str, str, int], dict[Sink, BusRun]] = {}
    try:
        await link.wait_connected()
        harness = Harness(link, subjects, listener)
        for view in _views(options):
            for run in range(options.repeat):
                for chunk in options.chunks:
                    key = (view.recording.name, view.name, chunk)
                    for sink in Sink:
                        progress.step(
                            f"{view.recording.name} {view.name}, {chunk} per turn: {sink} "
                            f"(run {run + 1}/{options.repeat}, {len(view.frames):,} messages)"
                        )
                        result = await harness.run(sink, view, chunk)
                        runs = best.setdefault(key, {})
                        if sink not in runs or result.seconds < runs[sink].seconds:
                            runs[sink] = result
    finally:
        link_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link_task
    return best


def run(options: IngestBusOptions, progress: Progress) -> ScenarioResult:
    from app.loop import loop_factory
    from bus.natsserver import NatsServer

    progress.scenario("ingestbus")
    sizes = {(v.recording.name, v.name): len(v.frames) for v in _views(options)}
    with NatsServer() as nats:
        prefix = f"{PREFIX}{os.getpid()}"
        with (
            Listener(nats.url, (f"{prefix}.book.>", f"{prefix}.status.>")) as listener,
            asyncio.Runner(loop_factory=loop_factory()) as runner,
        ):
            best = runner.run(measure(options, nats.url, listener, progress))
    progress.done()
    return report(best, sizes, options)


def report(
    best: dict[tuple[str, str, int], dict[Sink, BusRun]],
    sizes: dict[tuple[str, str], int],
    options: IngestBusOptions,
) -> ScenarioResult:
    result = ScenarioResult(
        key="ingestbus",
        title="7b. Ingest with the bus: the full path publishing to NATS, against without",
        how=(
            "The recorded Binance frames of scenario 1 through FeedSession.receive, in one "
            "asyncio loop, into the BookRegistry (without the bus) or into the ingest's "
            "BusPublisher over a registry (with the bus: snapshots and states published on "
            "NATS in the publisher's tick), fed N frames per loop turn. Messages/s = frames / "
            "the time to the end of the recording, including the publisher's last tick and a "
            "NATS flush. A nats-server of the bench's own on loopback, one connection for "
            "every run, a subscriber in another process on the book and status subjects. "
            f"Best of {options.repeat} interleaved runs; "
            + ("all frames." if options.frames is None else f"first {options.frames:,} frames.")
        ),
    )
    rows: list[tuple[str, ...]] = []
    tops_agree = True
    for (recording, view, chunk), runs in best.items():
        messages = sizes[(recording, view)]
        without = messages / runs[Sink.REGISTRY].seconds
        bus = runs[Sink.BUS]
        with_bus = messages / bus.seconds
        tops_agree = tops_agree and runs[Sink.REGISTRY].top == bus.top
        for sink, timing in runs.items():
            rate = messages / timing.seconds
            rows.append(
                (
                    recording,
                    view,
                    str(chunk),
                    str(sink),
                    number(rate),
                    ratio(rate, without),
                    f"{timing.published:,}" if sink is Sink.BUS else "-",
                    f"{timing.dropped:,}" if sink is Sink.BUS else "-",
                    f"{timing.delivered:,}" if sink is Sink.BUS else "-",
                )
            )
        key = f"{recording}_{view.split()[0]}_chunk{chunk}"
        result.figures[f"{key}_with_bus_msgs_per_s"] = with_bus
        result.figures[f"{key}_without_bus_msgs_per_s"] = without
        result.figures[f"{key}_published"] = bus.published
        result.figures[f"{key}_dropped"] = bus.dropped
        if chunk == options.chunks[0]:
            result.targets.append(
                Target(
                    f"{recording} {view}, {chunk} frame{'s' if chunk > 1 else ''} per loop "
                    "turn: full path with the bus / without, messages/s",
                    100 * with_bus / without,
                    100 * BUS_TARGET,
                    "%",
                )
            )
    result.tables.append(
        Table(
            "messages/s with and without the bus (best runs)",
            (
                "recording",
                "view",
                "frames per loop turn",
                "contender",
                "messages/s",
                "vs without",
                "bus messages published",
                "dropped",
                "received by the subscriber",
            ),
            rows,
        )
    )
    result.notes.append(
        "both contenders ended on the same best bid/ask"
        if tops_agree
        else "WARNING: the contenders ended on different best bid/ask: a contender is wrong"
    )
    result.notes.append(
        "published counts books and states after the publisher's conflation (latest value "
        "per instrument per tick; heartbeats not counted); dropped = publishes NATS refused"
    )
    return result
