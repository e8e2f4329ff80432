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
runs); the clock stops at the end of the recording, once the publisher's final tick
has run and nats-py has written it to the socket. A NATS ``flush`` then makes sure the
server has every message, outside the clock: that round trip is the server's
responsiveness, not the ingest's work. The bus is real: a nats-server
the bench starts on a free loopback port, one connection (``bus.link.BusLink``) kept
up through every run of both contenders, and a subscriber in another process on the
book and status subjects, so NATS really delivers (its count is reported).

One frame per loop turn is the worst case: once its burst of flushes is spent, the
publisher flushes once a millisecond while busy (``bus.ingest.FlushBudget``), so it
conflates only what arrived within that millisecond; larger chunks also let it conflate
what one turn produced, as when frames arrive in a burst. Contenders run ``repeat`` times,
interleaved, each pair in the other order than the pair before (so neither always
runs first); the best run counts.

What runs beside the measured process, the nats-server and the subscriber, runs at a
lower priority (``HELPER_NICENESS``): they stand for the bus and for the edges, which
a deployment gives cores of their own, while the bench box has two, shared. At full
priority each flush (up to 1,000 a second) woke both, and on a busy box they
preempted the measured process: over 10 pairs of 12,000 spot frames, 240 involuntary
context switches per run with the bus against 93 without (104-146 against 90-113 at
niceness 19), while publishing itself adds 1.3-2.1% to the instructions per frame
(callgrind; docs/performance.md, 7b). Each run reports its context switches
(``preempted``), so a run disturbed by the machine shows as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
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
from bus.natsserver import NatsServer
from bus.subjects import Subjects

BUS_TARGET = 0.85
"""The full path's messages/s with the bus as a share of without (issue 11)."""
DELIVERY_TIMEOUT = 10.0
"""Longest wait for the subscriber to receive what a run published."""
PREFIX = "benchingest"
HELPER_NICENESS = 19
"""Niceness of the nats-server and the subscriber: they take what the measured process
leaves of the box rather than preempting it."""


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
    preempted: int
    """The process's involuntary context switches during the timed part of the run."""
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
    os.nice(HELPER_NICENESS)
    serve_commands(pipe, _ListenerSide().handle)


class LowPriorityNatsServer(NatsServer):
    """The bench's nats-server, started under ``nice`` (its threads inherit it)."""

    @property
    def command(self) -> list[str]:
        return ["nice", "-n", str(HELPER_NICENESS), *super().command]


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
            switches = _involuntary_switches()
            started = time.perf_counter()
            for start in range(0, len(frames), chunk):
                path.feed(frames[start : start + chunk])
                await asyncio.sleep(0)
            await _settle(publisher)
            seconds = time.perf_counter() - started
            preempted = _involuntary_switches() - switches
            if publisher is not None:
                await (await self.link.wait_connected()).flush()  # the server has them all
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
            return BusRun(seconds, top, preempted)
        counters = publisher.counters
        expected = self._received + counters.published
        received = await asyncio.to_thread(self.listener.count, expected)
        delivered, self._received = received - self._received, received
        return BusRun(seconds, top, preempted, counters.published, counters.dropped, delivered)


def _involuntary_switches() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


async def _settle(publisher: BusPublisher | None) -> None:
    """Until everything the publisher was handed is written to its socket (its tick ran
    and nats-py's buffer is empty): loop turns, as between the chunks (an event set on
    every tick would cost the hot path)."""
    while publisher is not None and not _written(publisher):  # noqa: ASYNC110
        await asyncio.sleep(0)


def _written(publisher: BusPublisher) -> bool:
    client = publisher.link.client
    return publisher.idle and client is not None and client.pending_data_size == 0


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
        pairs = 0
        for view in _views(options):
            for run in range(options.repeat):
                for chunk in options.chunks:
                    key = (view.recording.name, view.name, chunk)
                    order = tuple(Sink) if pairs % 2 == 0 else tuple(reversed(Sink))
                    pairs += 1
                    for sink in order:
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

    progress.scenario("ingestbus")
    sizes = {(v.recording.name, v.name): len(v.frames) for v in _views(options)}
    with LowPriorityNatsServer() as nats:
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
            "the time to the end of the recording, including the publisher's last tick and "
            "nats-py's write of it to the socket (a NATS flush follows, untimed). A "
            "nats-server of the bench's own on loopback, one connection for every run, a "
            "subscriber in another process on the book and status subjects; "
            f"both at niceness {HELPER_NICENESS}, so they do not preempt the measured "
            f"process. Best of {options.repeat} interleaved runs, each pair in the other "
            "order than the one before; "
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
        for sink in Sink:
            timing = runs[sink]
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
                    f"{timing.preempted:,}",
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
                "preempted",
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
        "per instrument per tick; heartbeats not counted); dropped = publishes NATS refused; "
        "preempted = the bench process's involuntary context switches during the run (the "
        "machine's other work taking its core)"
    )
    return result
