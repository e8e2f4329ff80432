"""The I/O side of one venue connection: connect, subscribe, receive, resync, reconnect.

Everything protocol-specific is in the venue's ``VenueAdapter`` and ``BookSync``; this
module only moves frames and acts on what the syncs report. One runner owns one
websocket connection and the books of its instruments; a problem with one instrument
resyncs that instrument only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from book.registry import BookRegistry
from book.status import InstrumentState, InstrumentStatus
from feeds.backoff import Backoff
from feeds.dispatch import BookDispatcher
from feeds.events import ConnectionGapEvent, FeedEvent, MalformedEvent, VenueErrorEvent
from feeds.exceptions import SilentConnectionError, SnapshotError, VenueClosingError
from feeds.incidents import FeedIncident, IncidentKind, IncidentSink, ignore_incident
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


def websocket_connect(url: str) -> AbstractAsyncContextManager[FeedSocket]:
    """Real websocket connection: 16 MiB frames (full-book snapshots), 20 s pings."""
    return ws_connect(url, max_size=16 * 2**20, ping_interval=20, ping_timeout=20, open_timeout=10)


_PROBLEM_INCIDENT = {
    ProblemKind.GAP: IncidentKind.GAP,
    ProblemKind.CHECKSUM: IncidentKind.CHECKSUM,
    ProblemKind.MISMATCH: IncidentKind.CHECKSUM,
    ProblemKind.CROSSED: IncidentKind.CHECKSUM,
}


class FeedRunner:
    """Keeps the books of ``instruments`` on one venue live, forever, until cancelled."""

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
        clock: Callable[[], int] = time.time_ns,
        recorder: Callable[[RecordedFrame], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.venue = adapter.venue
        self.registry = registry
        self.instruments = list(instruments or adapter.symbols.instruments())
        self.dispatcher = BookDispatcher(adapter, self.instruments, capture_depth=capture_depth)
        self.counters = self.dispatcher.counters
        self._connect = connect
        self._http = http
        self._on_incident = on_incident
        self._backoff = backoff or Backoff()
        self._snapshot_slots = asyncio.Semaphore(snapshot_concurrency)
        self._clock = clock
        self._recorder = recorder
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._session_tasks: set[asyncio.Task[None]] = set()
        self._task_group: asyncio.TaskGroup | None = None
        self._ws: FeedSocket | None = None
        self.connections = 0
        for name in self.instruments:
            registry.add_instrument(name, clock())

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep reconnecting (capped jittered backoff) until cancelled."""
        async with self._http_client() as http:
            self._http = http
            while True:
                try:
                    await self._connection()
                except (
                    OSError,
                    WebSocketException,
                    TimeoutError,
                    SilentConnectionError,
                    VenueClosingError,
                ) as exc:
                    detail = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # task boundary: a bug must not end the feed
                    self.counters.internal_errors += 1
                    log.exception("%s: feed failed; reconnecting", self.venue)
                    detail = f"internal error: {type(exc).__name__}: {exc}"
                else:
                    detail = "closed by venue"
                self._incident(None, IncidentKind.DISCONNECT, detail)
                self._mark_all_stale(SyncProblem(ProblemKind.DISCONNECTED, detail))
                delay = self._backoff.next_delay()
                log.warning(
                    "%s: connection lost (%s); reconnecting in %.2fs", self.venue, detail, delay
                )
                await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def _http_client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http is not None:
            yield self._http
            return
        async with httpx.AsyncClient(timeout=10.0) as client:
            yield client

    async def _connection(self) -> None:
        url = self.adapter.stream_url(self.instruments)
        async with self._connect(url) as ws:
            self.connections += 1
            self._incident(None, IncidentKind.CONNECT, url)
            self._record(FrameKind.CONNECT, "", url)
            await self._send_all(ws, self.adapter.subscribe_frames(self.instruments))
            lost: Exception | None = None
            async with asyncio.TaskGroup() as group:
                self._task_group, self._ws = group, ws
                try:
                    for name in self.instruments:
                        self._begin_sync(name)
                    if self.adapter.app_ping_interval > 0:
                        self._spawn(self._ping_forever(ws), "ping")
                    await self._receive_forever(ws)
                except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                    lost = exc
                finally:
                    # Nothing of this connection may outlive it.
                    self._task_group = self._ws = None
                    for task in self._session_tasks:
                        task.cancel()
                    self._session_tasks.clear()
                    self._fetches.clear()
            if lost is not None:
                raise lost

    async def _receive_forever(self, ws: FeedSocket) -> None:
        adapter = self.adapter
        parse = adapter.parse
        while True:
            timeout = adapter.silence_timeout
            try:
                async with asyncio.timeout(timeout):
                    frame = await ws.recv()
            except TimeoutError:
                raise SilentConnectionError(f"nothing received for {timeout:g}s") from None
            ts_recv = self._clock()
            self.counters.frames += 1
            if self._recorder is not None:
                text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                self._record(FrameKind.RECV, text, ts=ts_recv)
            for event in parse(frame):
                self._on_event(event, ts_recv)

    async def _ping_forever(self, ws: FeedSocket) -> None:
        frame = self.adapter.app_ping_frame()
        if frame is None:
            return
        while True:
            await asyncio.sleep(self.adapter.app_ping_interval)
            await self._send_all(ws, [frame])

    # -- events ----------------------------------------------------------------------

    def _on_event(self, event: FeedEvent, ts_recv: int) -> None:
        instrument, result = self.dispatcher.handle(event, ts_recv)
        if instrument is not None:
            self._act(instrument, result)
        elif isinstance(event, MalformedEvent):
            log.warning("%s: malformed frame (%s): %.200s", self.venue, event.reason, event.raw)
        elif isinstance(event, ConnectionGapEvent):
            problem = SyncProblem(ProblemKind.GAP, event.detail)
            for name in self.instruments:
                self._resync(name, problem)
        elif isinstance(event, VenueErrorEvent):
            self.counters.venue_errors += 1
            self._incident(event.instrument, IncidentKind.ERROR, event.message)
            if event.reconnect:
                raise VenueClosingError(event.message)

    def _act(self, instrument: str, result: SyncResult) -> None:
        if result.snapshot is not None:
            self.registry.publish(result.snapshot)
            if not self.registry.is_live(instrument):
                self._backoff.reset()  # a book went live: this connection is good
                self._set_state(instrument, InstrumentState.LIVE, "in sync")
                self._incident(instrument, IncidentKind.LIVE, f"seq {result.snapshot.seq}")
        elif result.problem is not None:
            self._resync(instrument, result.problem)
        elif result.refetch:
            self._start_fetch(instrument)

    def _resync(self, instrument: str, problem: SyncProblem) -> None:
        """Mark one instrument stale and bring it back; the others are not touched."""
        self.counters.count_problem(problem)
        log.warning("%s: %s is stale (%s); resyncing it", self.venue, instrument, problem)
        self._incident(
            instrument, _PROBLEM_INCIDENT.get(problem.kind, IncidentKind.STALE), str(problem)
        )
        self._set_state(instrument, InstrumentState.STALE, str(problem))
        self._incident(instrument, IncidentKind.RESYNC, "resync started")
        self._begin_sync(instrument)
        if not self.adapter.rest_snapshots and self._ws is not None:
            frames = self.adapter.resubscribe_frames(instrument)
            self._spawn(self._send_all(self._ws, frames), f"resubscribe:{instrument}")

    def _begin_sync(self, instrument: str) -> None:
        self.dispatcher.syncs[instrument].reset()
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
                async with self._snapshot_slots:
                    body = await self._get(url)
                event = self.adapter.parse_snapshot(instrument, body)
            except (SnapshotError, httpx.HTTPError, ValueError) as exc:
                delay = backoff.next_delay()
                if isinstance(exc, _RetryAfter):
                    delay = max(delay, exc.seconds)
                log.warning(
                    "%s: snapshot of %s failed (%s); retry in %.2fs",
                    self.venue,
                    instrument,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            _, result = self.dispatcher.handle(event, self._clock())
            if result.refetch:
                await asyncio.sleep(backoff.next_delay())
                continue
            self._act(instrument, result)
            return

    async def _get(self, url: str) -> bytes:
        assert self._http is not None
        response = await self._http.get(url)
        if response.status_code in (418, 429):
            retry_after = float(response.headers.get("Retry-After", "1") or 1)
            raise _RetryAfter(
                retry_after, f"HTTP {response.status_code}, retry after {retry_after}s"
            )
        if response.status_code != 200:
            raise SnapshotError(f"HTTP {response.status_code}: {response.text[:200]}")
        self._record(FrameKind.HTTP, response.text, url)
        return response.content

    # -- helpers ---------------------------------------------------------------------

    async def _send_all(self, ws: FeedSocket, frames: list[str]) -> None:
        for frame in frames:
            self._record(FrameKind.SEND, frame)
            await ws.send(frame)

    def _record(self, kind: FrameKind, data: str, url: str = "", ts: int = 0) -> None:
        if self._recorder is not None:
            self._recorder(
                RecordedFrame(
                    ts or self._clock(),
                    kind,
                    data,
                    url=url,
                    venue=self.venue,
                    conn=self.connections,
                )
            )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """Start a task owned by the current connection (cancelled when it ends)."""
        group = self._task_group
        if group is None:
            coro.close()
            return None
        task = group.create_task(coro, name=f"{self.venue}:{name}")
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)
        return task

    def _set_state(self, instrument: str, state: InstrumentState, reason: str) -> None:
        self.registry.set_status(InstrumentStatus(instrument, state, reason, self._clock()))

    def _mark_all_stale(self, problem: SyncProblem) -> None:
        for name in self.instruments:
            self.dispatcher.syncs[name].reset()
            if self.registry.is_live(name):
                self._set_state(name, InstrumentState.STALE, str(problem))

    def _incident(self, instrument: str | None, kind: IncidentKind, detail: str) -> None:
        self._on_incident(FeedIncident(self._clock(), self.venue, instrument, kind, detail))


class _RetryAfter(SnapshotError):
    """HTTP 429/418: the venue says how long to wait (Binance request-weight limits)."""

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds = seconds
