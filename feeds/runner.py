"""The I/O side of a venue: connections, subscriptions, resyncs, reconnects, rotation.

Everything protocol-specific is in the venue's ``VenueAdapter`` and ``BookSync``; this
module moves frames and acts on what the syncs report. A ``FeedRunner`` keeps the books
of its instruments live forever: one ``FeedConnection`` at a time publishes, a problem
with one instrument resyncs that instrument only, and a lost connection is replaced
with capped, jittered backoff. A connection older than the venue's lifetime limit is
replaced make-before-break: a standby connection syncs its own books in the shadow,
then takes over in one synchronous step, so subscribers see no gap and ``seq`` keeps
growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from book.incidents import FeedIncident, IncidentKind, IncidentSink, ignore_incident
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from feeds.backoff import Backoff
from feeds.dispatch import BookDispatcher, FeedCounters
from feeds.events import ConnectionGapEvent, FeedEvent, MalformedEvent, VenueErrorEvent
from feeds.exceptions import SilentConnectionError, SnapshotError, VenueClosingError
from feeds.ratelimit import WeightLimiter
from feeds.recordings import FrameKind, RecordedFrame
from feeds.sync import ProblemKind, SyncProblem, SyncResult
from feeds.venue import VenueAdapter

log = logging.getLogger(__name__)


class FeedSocket(Protocol):
    """The part of a websockets client connection the runner uses."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


Connect = Callable[[str], AbstractAsyncContextManager[FeedSocket]]
Recorder = Callable[[RecordedFrame], None]

CONNECTION_LOST = (
    OSError,
    WebSocketException,
    TimeoutError,
    SilentConnectionError,
    VenueClosingError,
)


def websocket_connect(url: str) -> AbstractAsyncContextManager[FeedSocket]:
    """Real websocket connection: 16 MiB frames (full-book snapshots), 20 s pings, and a
    short closing handshake (a venue that does not answer it must not stall shutdown)."""
    return ws_connect(
        url,
        max_size=16 * 2**20,
        ping_interval=20,
        ping_timeout=20,
        open_timeout=10,
        close_timeout=2,
    )


_CONNECTION_IDS = itertools.count(1)

_WATCH_PERIOD = 1.0
"""Longest time between passes of the per-instrument watchdog."""

_PROBLEM_INCIDENT = {
    ProblemKind.GAP: IncidentKind.GAP,
    ProblemKind.CHECKSUM: IncidentKind.CHECKSUM,
    ProblemKind.MISMATCH: IncidentKind.CHECKSUM,
    ProblemKind.CROSSED: IncidentKind.CHECKSUM,
}


class FeedRunner:
    """Keeps the books of ``instruments`` on one venue live, forever, until cancelled.

    ``limiter`` is the venue's REST weight budget, shared by all of its runners.
    ``rotate_timeout`` bounds how long a standby connection may take to sync before the
    rotation is abandoned (and retried after another ``max_connection_age``).
    """

    def __init__(
        self,
        adapter: VenueAdapter,
        *,
        registry: BookRegistry,
        instruments: Sequence[str] | None = None,
        capture_depth: int = 0,
        connect: Connect = websocket_connect,
        http: httpx.AsyncClient | None = None,
        on_incident: IncidentSink = ignore_incident,
        backoff: Backoff | None = None,
        snapshot_concurrency: int = 2,
        limiter: WeightLimiter | None = None,
        rotate_timeout: float = 60.0,
        clock: Callable[[], int] = time.time_ns,
        recorder: Recorder | None = None,
    ) -> None:
        self.adapter = adapter
        self.venue = adapter.venue
        self.registry = registry
        self.instruments = list(instruments or adapter.symbols.instruments())
        self.capture_depth = capture_depth
        self.counters = FeedCounters()
        self.connect = connect
        self.limiter = limiter
        self.rotate_timeout = rotate_timeout
        self.clock = clock
        self.recorder = recorder
        self.snapshot_slots = asyncio.Semaphore(snapshot_concurrency)
        self.http = http
        self._on_incident = on_incident
        self._backoff = backoff or Backoff()
        self._current: FeedConnection | None = None
        self.connections = 0
        self.rotations = 0
        for name in self.instruments:
            registry.add_instrument(name, clock())

    @property
    def dispatcher(self) -> BookDispatcher | None:
        """The books of the connection that currently publishes."""
        return self._current.dispatcher if self._current is not None else None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep reconnecting (capped jittered backoff) until cancelled."""
        async with self._http_client():
            while True:
                try:
                    await self._serve(FeedConnection(self, publishing=True))
                except CONNECTION_LOST as exc:
                    detail = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # task boundary: a bug must not end the feed
                    self.counters.internal_errors += 1
                    log.exception("%s: feed failed; reconnecting", self.venue)
                    detail = f"internal error: {type(exc).__name__}: {exc}"
                else:
                    detail = "closed by venue"
                self._current = None
                self.incident(None, IncidentKind.DISCONNECT, detail)
                self._mark_all_stale(SyncProblem(ProblemKind.DISCONNECTED, detail))
                delay = self._backoff.next_delay()
                log.warning(
                    "%s: connection lost (%s); reconnecting in %.2fs", self.venue, detail, delay
                )
                await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def _http_client(self) -> AsyncIterator[None]:
        if self.http is not None:
            yield
            return
        async with httpx.AsyncClient(timeout=10.0) as client:
            self.http = client
            try:
                yield
            finally:
                self.http = None

    async def _serve(self, connection: FeedConnection) -> None:
        """Run ``connection`` (and the ones rotated in after it) until one is lost."""
        self._current = connection
        task = asyncio.create_task(connection.run(), name=f"{self.venue}:connection")
        standby_task: asyncio.Task[None] | None = None
        try:
            while True:
                age = self.adapter.max_connection_age
                done, _ = await asyncio.wait({task}, timeout=age if age > 0 else None)
                if done:
                    task.result()  # raises what ended the connection
                    return
                standby = FeedConnection(self, publishing=False)
                standby_task = asyncio.create_task(standby.run(), name=f"{self.venue}:standby")
                ready: asyncio.Task[Any] = asyncio.create_task(standby.ready.wait())
                waiting: set[asyncio.Task[Any]] = {task, standby_task, ready}
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=self.rotate_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                ready.cancel()
                if ready in done and not task.done() and not standby_task.done():
                    self._promote(connection, standby)
                    old, task, connection, standby_task = task, standby_task, standby, None
                    await _cancelled(old)
                    continue
                log.warning("%s: standby connection did not sync; keeping the old one", self.venue)
                await _cancelled(standby_task)
                standby_task = None
                if task.done():
                    task.result()
                    return
        finally:
            for pending in (task, standby_task):
                if pending is not None:
                    await _cancelled(pending)

    def _promote(self, old: FeedConnection, new: FeedConnection) -> None:
        """Hand publishing from ``old`` to ``new`` in one synchronous step (no gap)."""
        old.publishing = False
        now = self.clock()
        for name in self.instruments:
            sync = new.dispatcher.syncs[name]
            published = self.registry.get(name)
            if published is not None:
                sync.book.continue_from(published.seq)
            shadow = new.shadow_latest.get(name)
            ts_event, ts_recv = (shadow.ts_event, shadow.ts_recv) if shadow else (0, now)
            self.registry.publish(sync.book.snapshot(ts_event, ts_recv, now))
            if not self.registry.is_live(name):
                self.set_state(name, InstrumentState.LIVE, "in sync")
        new.publishing = True
        self._current = new
        self.rotations += 1
        self.incident(None, IncidentKind.CONNECT, "rotated to a new connection (make-before-break)")

    # -- what connections report -------------------------------------------------------

    def went_live(self, instrument: str, snapshot: BookSnapshot) -> None:
        self._backoff.reset()  # a book went live: this connection is good
        self.set_state(instrument, InstrumentState.LIVE, "in sync")
        self.incident(instrument, IncidentKind.LIVE, f"seq {snapshot.seq}")

    def went_stale(self, instrument: str, problem: SyncProblem) -> None:
        log.warning("%s: %s is stale (%s); resyncing it", self.venue, instrument, problem)
        self.incident(
            instrument, _PROBLEM_INCIDENT.get(problem.kind, IncidentKind.STALE), str(problem)
        )
        self.set_state(instrument, InstrumentState.STALE, str(problem))
        self.incident(instrument, IncidentKind.RESYNC, "resync started")

    def set_state(self, instrument: str, state: InstrumentState, reason: str) -> None:
        self.registry.set_status(InstrumentStatus(instrument, state, reason, self.clock()))

    def incident(self, instrument: str | None, kind: IncidentKind, detail: str) -> None:
        self._on_incident(FeedIncident(self.clock(), self.venue, instrument, kind, detail))

    def record(
        self, connection: FeedConnection, kind: FrameKind, data: str, url: str = "", ts: int = 0
    ) -> None:
        if self.recorder is not None:
            ts = ts or self.clock()
            frame = RecordedFrame(ts, kind, data, url=url, venue=self.venue, conn=connection.id)
            self.recorder(frame)

    def _mark_all_stale(self, problem: SyncProblem) -> None:
        for name in self.instruments:
            if self.registry.is_live(name):
                self.set_state(name, InstrumentState.STALE, str(problem))


class FeedConnection:
    """One websocket connection and the books synced over it.

    A ``publishing`` connection publishes snapshots and states; a standby one (make-
    before-break) keeps its books in the shadow and sets ``ready`` once all are live.
    """

    def __init__(self, runner: FeedRunner, *, publishing: bool) -> None:
        self.runner = runner
        self.adapter = runner.adapter
        self.publishing = publishing
        self.id = next(_CONNECTION_IDS)
        """Unique in the process: recordings keep connections apart by it."""
        self.dispatcher = BookDispatcher(
            runner.adapter,
            runner.instruments,
            capture_depth=runner.capture_depth,
            counters=runner.counters,
        )
        for name, sync in self.dispatcher.syncs.items():
            published = runner.registry.get(name)
            if published is not None:
                sync.book.continue_from(published.seq)
        self.ready = asyncio.Event()
        self.shadow_latest: dict[str, BookSnapshot] = {}
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._sync_started: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._ws: FeedSocket | None = None

    async def run(self) -> None:
        runner = self.runner
        url = self.adapter.stream_url(runner.instruments)
        async with runner.connect(url) as ws:
            runner.connections += 1
            self.adapter.connection_started()
            runner.incident(
                None, IncidentKind.CONNECT, url if self.publishing else f"standby {url}"
            )
            runner.record(self, FrameKind.CONNECT, "", url)
            await self._send_all(ws, self.adapter.subscribe_frames(runner.instruments))
            lost: Exception | None = None
            async with asyncio.TaskGroup() as group:
                self._group, self._ws = group, ws
                try:
                    for name in runner.instruments:
                        self._begin_sync(name)
                    if self.adapter.app_ping_interval > 0:
                        self._spawn(self._ping_forever(ws), "ping")
                    self._spawn(self._watch_instruments(), "instrument-watch")
                    await self._receive_forever(ws)
                except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                    lost = exc
                finally:
                    # Nothing of this connection may outlive it.
                    self._group = self._ws = None
                    for task in self._tasks:
                        task.cancel()
            if lost is not None:
                raise lost

    async def _receive_forever(self, ws: FeedSocket) -> None:
        adapter, runner = self.adapter, self.runner
        parse, clock, counters = adapter.parse, runner.clock, runner.counters
        while True:
            try:
                async with asyncio.timeout(adapter.silence_timeout):
                    frame = await ws.recv()
            except TimeoutError:
                raise SilentConnectionError(
                    f"nothing received for {adapter.silence_timeout:g}s"
                ) from None
            ts_recv = clock()
            counters.frames += 1
            if runner.recorder is not None:
                text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                runner.record(self, FrameKind.RECV, text, ts=ts_recv)
            for event in parse(frame):
                self._on_event(event, ts_recv)

    async def _ping_forever(self, ws: FeedSocket) -> None:
        while True:
            await asyncio.sleep(self.adapter.app_ping_interval)
            frame = self.adapter.app_ping_frame()  # fresh each time: venues number them
            if frame is not None:
                await self._send_all(ws, [frame])

    async def _watch_instruments(self) -> None:
        """Per-instrument watchdog, one pass per second, nothing on the hot path:

        - a resync that has not brought the instrument back within the venue's
          ``resync_timeout`` (a rejected resubscribe, a lost snapshot) starts again;
        - a live instrument with no book message for ``instrument_silence_timeout``
          (book messages counted between passes) is resynced.
        """
        adapter = self.adapter
        counts = self.runner.counters.by_instrument
        seen = dict(counts)
        quiet_since: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            silence = adapter.instrument_silence_timeout
            await asyncio.sleep(min(_WATCH_PERIOD, silence / 4) if silence > 0 else _WATCH_PERIOD)
            now = loop.time()
            for name, sync in self.dispatcher.syncs.items():
                if not sync.live:
                    started = self._sync_started.get(name, now)
                    if now - started > adapter.resync_timeout:
                        log.warning(
                            "%s: %s not in sync after %.0fs; retrying",
                            self.runner.venue,
                            name,
                            now - started,
                        )
                        self._restart_sync(name)
                    continue
                count = counts.get(name, 0)
                if count != seen.get(name, 0):
                    seen[name] = count
                    quiet_since[name] = now
                elif silence > 0 and now - quiet_since.setdefault(name, now) >= silence:
                    problem = SyncProblem(ProblemKind.SILENT, f"no book message for {silence:g}s")
                    quiet_since[name] = now
                    self._resync(name, problem)

    # -- events ----------------------------------------------------------------------

    def _on_event(self, event: FeedEvent, ts_recv: int) -> None:
        instrument, result = self.dispatcher.handle(event, ts_recv)
        if instrument is not None:
            self._act(instrument, result)
        elif isinstance(event, MalformedEvent):
            log.warning(
                "%s: malformed frame (%s): %.200s", self.runner.venue, event.reason, event.raw
            )
        elif isinstance(event, ConnectionGapEvent):
            problem = SyncProblem(ProblemKind.GAP, event.detail)
            for name in self.runner.instruments:
                self._resync(name, problem)
        elif isinstance(event, VenueErrorEvent):
            self.runner.counters.venue_errors += 1
            self.runner.incident(event.instrument, IncidentKind.ERROR, event.message)
            if event.reconnect:
                raise VenueClosingError(event.message)

    def _act(self, instrument: str, result: SyncResult) -> None:
        snapshot = result.snapshot
        if snapshot is not None:
            if not self.publishing:
                self.shadow_latest[instrument] = snapshot
                if len(self.shadow_latest) == len(self.dispatcher.syncs):
                    self.ready.set()
                return
            registry = self.runner.registry
            registry.publish(snapshot)
            if not registry.is_live(instrument):
                self.runner.went_live(instrument, snapshot)
        elif result.problem is not None:
            self._resync(instrument, result.problem)
        elif result.refetch:
            self._start_fetch(instrument)

    def _resync(self, instrument: str, problem: SyncProblem) -> None:
        """Mark one instrument stale and bring it back; the others are not touched."""
        self.runner.counters.count_problem(problem)
        if self.publishing:
            self.runner.went_stale(instrument, problem)
        else:
            self.shadow_latest.pop(instrument, None)
        self._restart_sync(instrument)

    def _restart_sync(self, instrument: str) -> None:
        """Reset the book and ask the venue for a fresh snapshot (REST or resubscribe)."""
        self._begin_sync(instrument)
        if not self.adapter.rest_snapshots and self._ws is not None:
            frames = self.adapter.resubscribe_frames(instrument)
            self._spawn(self._send_all(self._ws, frames), f"resubscribe:{instrument}")

    def _begin_sync(self, instrument: str) -> None:
        self.dispatcher.syncs[instrument].reset()
        self._sync_started[instrument] = asyncio.get_running_loop().time()
        if self.adapter.rest_snapshots:
            self._start_fetch(instrument)

    # -- REST snapshots ------------------------------------------------------------

    def _start_fetch(self, instrument: str) -> None:
        running = self._fetches.get(instrument)
        if running is not None and not running.done():
            running.cancel()
        task = self._spawn(self._fetch_snapshot(instrument), f"snapshot:{instrument}")
        if task is not None:
            self._fetches[instrument] = task

    async def _fetch_snapshot(self, instrument: str) -> None:
        backoff = Backoff(initial=0.25, maximum=10.0)
        url = self.adapter.snapshot_url(instrument)
        while True:
            try:
                body = await self._get(url)
                event = self.adapter.parse_snapshot(instrument, body)
            except (SnapshotError, httpx.HTTPError, ValueError) as exc:
                delay = backoff.next_delay()
                if isinstance(exc, _RetryAfter):
                    delay = max(delay, exc.seconds)
                log.warning(
                    "%s: snapshot of %s failed (%s); retry in %.2fs",
                    self.runner.venue,
                    instrument,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            _, result = self.dispatcher.handle(event, self.runner.clock())
            if result.refetch:
                await asyncio.sleep(backoff.next_delay())
                continue
            self._act(instrument, result)
            return

    async def _get(self, url: str) -> bytes:
        runner = self.runner
        http = runner.http
        assert http is not None, "the runner owns an HTTP client while it runs"
        if runner.limiter is not None:
            await runner.limiter.acquire(self.adapter.snapshot_weight)
        async with runner.snapshot_slots:
            response = await http.get(url)
        status = response.status_code
        if status in (418, 429):
            retry_after = float(response.headers.get("Retry-After", "1") or 1)
            if runner.limiter is not None:
                runner.limiter.pause(retry_after)
            raise _RetryAfter(retry_after, f"HTTP {status}, retry after {retry_after}s")
        if status != 200:
            raise SnapshotError(f"HTTP {status}: {response.text[:200]}")
        runner.record(self, FrameKind.HTTP, response.text, url)
        return response.content

    # -- helpers ---------------------------------------------------------------------

    async def _send_all(self, ws: FeedSocket, frames: list[str]) -> None:
        for frame in frames:
            self.runner.record(self, FrameKind.SEND, frame)
            await ws.send(frame)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """Start a task owned by this connection (cancelled when it ends)."""
        group = self._group
        if group is None:
            coro.close()
            return None
        task = group.create_task(coro, name=f"{self.runner.venue}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _RetryAfter(SnapshotError):
    """HTTP 429/418: the venue says how long to wait (Binance request-weight limits)."""

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds = seconds


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, whatever it ends with."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
