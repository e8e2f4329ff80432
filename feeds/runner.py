"""The I/O side of a venue: connections, subscriptions, REST snapshots, reconnects,
rotation.

Everything protocol-specific is in the venue's ``VenueAdapter`` and ``BookSync``, and
every decision about books in the ``FeedSession``; this module moves frames into the
session and carries out the actions it returns. A ``FeedRunner`` keeps the books of its
instruments live forever and writes only to its ``FeedSink``: one ``FeedConnection``
at a time writes there, a problem with one instrument resyncs that instrument only, and
a lost connection is replaced with capped, jittered backoff. A connection older than
the venue's lifetime limit is replaced make-before-break: a standby connection syncs
its own books into a ``ShadowSink``, then takes over in one synchronous step (its
session's sink is swapped for the real one), so subscribers see no gap and ``seq``
keeps growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from book.counters import FeedCounters
from book.incidents import FeedIncident, IncidentKind
from book.sink import DiscardingSink, FeedSink
from book.status import InstrumentState, InstrumentStatus
from feeds.backoff import Backoff
from feeds.dispatch import BookDispatcher
from feeds.exceptions import (
    HandshakeError,
    SilentConnectionError,
    SnapshotError,
    VenueClosingError,
)
from feeds.ratelimit import WeightLimiter
from feeds.recordings import FrameKind, RecordedFrame
from feeds.session import Actions, FeedSession, Reconnect, Refetch, RequestSnapshot
from feeds.shadow import ShadowSink
from feeds.silence import SECOND_NS
from feeds.sync import ProblemKind, SyncProblem
from feeds.venue import IdleProbe, VenueAdapter

log = logging.getLogger(__name__)


class FeedSocket(Protocol):
    """The part of a websockets client connection the runner uses."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def ping(self) -> Awaitable[float]: ...


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


class FeedRunner:
    """Keeps the books of ``instruments`` on one venue live, forever, until cancelled.

    Everything downstream learns goes to ``sink`` (in one process, the
    ``BookRegistry``); the runner never reads it back. ``limiter`` is the venue's REST
    weight budget, shared by all of its runners.
    ``rotate_timeout`` bounds how long a standby connection may take to sync before the
    rotation is abandoned (and retried after another ``max_connection_age``).
    """

    def __init__(
        self,
        adapter: VenueAdapter,
        *,
        sink: FeedSink,
        instruments: Sequence[str] | None = None,
        capture_depth: int = 0,
        connect: Connect = websocket_connect,
        http: httpx.AsyncClient | None = None,
        backoff: Backoff | None = None,
        snapshot_concurrency: int = 2,
        limiter: WeightLimiter | None = None,
        rotate_timeout: float = 60.0,
        clock: Callable[[], int] = time.time_ns,
        recorder: Recorder | None = None,
        seq_base: int = 0,
    ) -> None:
        self.adapter = adapter
        self.venue = adapter.venue
        self.sink = sink
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
        self._backoff = backoff or Backoff()
        self._current: FeedConnection | None = None
        self._standby: FeedConnection | None = None
        self.halted: dict[str, str] = {}
        """Instruments the venue does not trade now (``halt``) -> why."""
        self._seqs: dict[str, int] = dict.fromkeys(self.instruments, seq_base)
        """Each book's version when the last publishing connection ended; at first
        ``seq_base``, so a server's seqs continue above those of its previous run."""
        self.connections = 0
        self.rotations = 0
        for name in self.instruments:
            sink.add_instrument(name, clock())

    @property
    def dispatcher(self) -> BookDispatcher | None:
        """The books of the connection that currently publishes."""
        return self._current.session.dispatcher if self._current is not None else None

    def silence_threshold(self, instrument: str) -> float | None:
        """The current connection's silence threshold of ``instrument`` in seconds
        (``None``: no connection, or none learned and no upper bound)."""
        current = self._current
        return current.session.silence_threshold(instrument) if current is not None else None

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep reconnecting (capped jittered backoff) until cancelled."""
        async with self._http_client():
            while True:
                try:
                    await self._serve(FeedConnection(self, self.sink, self._seqs))
                except HandshakeError as exc:
                    self.counters.handshake_failures += 1
                    detail = f"HandshakeError: {exc}"
                    log.error("%s: %s", self.venue, exc, extra={"venue": self.venue})
                except CONNECTION_LOST as exc:
                    detail = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # task boundary: a bug must not end the feed
                    self.counters.internal_errors += 1
                    log.exception("%s: feed failed; reconnecting", self.venue)
                    detail = f"internal error: {type(exc).__name__}: {exc}"
                else:
                    detail = "closed by venue"
                self._connection_ended(detail)
                delay = self._backoff.next_delay()
                log.warning(
                    "%s: connection lost (%s); reconnecting in %.2fs",
                    self.venue,
                    detail,
                    delay,
                    extra={"venue": self.venue},
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
                trading = [name for name in self.instruments if name not in self.halted]
                shadow = ShadowSink(trading, self.sink)
                standby = self._standby = FeedConnection(self, shadow, connection.session.seqs())
                standby_task = asyncio.create_task(standby.run(), name=f"{self.venue}:standby")
                ready: asyncio.Task[Any] = asyncio.create_task(shadow.ready.wait())
                waiting: set[asyncio.Task[Any]] = {task, standby_task, ready}
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=self.rotate_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                ready.cancel()
                self._standby = None
                if (
                    ready in done
                    and not task.done()
                    and not standby_task.done()
                    and self._promote(connection, standby, shadow)
                ):
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
            self._standby = None
            for pending in (task, standby_task):
                if pending is not None:
                    await _cancelled(pending)

    def _promote(self, old: FeedConnection, new: FeedConnection, shadow: ShadowSink) -> bool:
        """Hand the sink from ``old`` to ``new`` in one synchronous step (no gap). Only a
        standby whose every book is live and uncrossed takes over; ``False`` if not."""
        snapshots = new.session.takeover_snapshots(old.session.seqs(), shadow.latest, self.clock())
        if snapshots is None:
            return False
        sink = self.sink
        old.session.sink = DiscardingSink()
        new.session.sink = sink
        for snapshot in snapshots:
            sink.publish(snapshot)
            if not old.session.is_live(snapshot.instrument):
                self.set_state(snapshot.instrument, InstrumentState.LIVE, "in sync")
        self._current = new
        self.rotations += 1
        self.incident(None, IncidentKind.CONNECT, "rotated to a new connection (make-before-break)")
        return True

    def _connection_ended(self, detail: str) -> None:
        """The publishing connection is gone: its live books are stale, and the next
        connection's books continue from its versions."""
        self.incident(None, IncidentKind.DISCONNECT, detail)
        current, self._current = self._current, None
        if current is None:
            return
        if current.session.ever_live:
            self._backoff.reset()  # a book went live: this connection was good
        current.session.connection_lost(SyncProblem(ProblemKind.DISCONNECTED, detail), self.clock())
        self._seqs = current.session.seqs()

    # -- operator requests (admin ops) ---------------------------------------------------

    def resync(self, instrument: str, reason: str) -> bool:
        """Resync ``instrument`` on the publishing connection; False if this runner does
        not carry it or has no connection right now."""
        current = self._current
        if current is None or instrument not in self.instruments:
            return False
        problem = SyncProblem(ProblemKind.REQUESTED, reason)
        current._perform(current.session.resync(instrument, problem, self.clock()))
        return True

    def halt(self, instrument: str, reason: str) -> bool:
        """The venue stopped trading ``instrument`` (its metadata says so): ``halted``
        with ``reason``, its book put aside on every connection (it stays subscribed;
        whatever the venue still sends for it is ignored) until ``resume``. False if
        this runner does not carry it."""
        if instrument not in self.instruments:
            return False
        self.halted[instrument] = reason
        for connection in (self._current, self._standby):
            if connection is not None:
                connection.session.halt(instrument)
        self.set_state(instrument, InstrumentState.HALTED, reason)
        self.incident(instrument, IncidentKind.STALE, f"halted: {reason}")
        return True

    def resume(self, instrument: str, reason: str) -> bool:
        """``instrument`` trades again: ``syncing``, and its book synced afresh on every
        connection. False if this runner had not halted it."""
        if self.halted.pop(instrument, None) is None:
            return False
        self.set_state(instrument, InstrumentState.SYNCING, reason)
        self.incident(instrument, IncidentKind.RESYNC, reason)
        for connection in (self._current, self._standby):
            if connection is not None:
                connection._perform(connection.session.resume(instrument, self.clock()))
        return True

    def reconnect(self, reason: str) -> bool:
        """Close the publishing connection (its books go stale) and connect again, as
        after any lost connection; False if there is no connection right now."""
        current = self._current
        return current is not None and current.close(reason)

    # -- what connections report -------------------------------------------------------

    def set_state(self, instrument: str, state: InstrumentState, reason: str) -> None:
        self.sink.set_status(InstrumentStatus(instrument, state, reason, self.clock()))

    def incident(self, instrument: str | None, kind: IncidentKind, detail: str) -> None:
        self.sink.incident(FeedIncident(self.clock(), self.venue, instrument, kind, detail))

    def record(
        self, connection: FeedConnection, kind: FrameKind, data: str, url: str = "", ts: int = 0
    ) -> None:
        if self.recorder is not None:
            ts = ts or self.clock()
            frame = RecordedFrame(ts, kind, data, url=url, venue=self.venue, conn=connection.id)
            self.recorder(frame)


class FeedConnection:
    """One websocket connection and its ``FeedSession`` (the books synced over it).

    The session writes to ``sink``: downstream for the connection that publishes, a
    ``ShadowSink`` for a standby one (make-before-break). Its books continue from
    ``seqs`` (the versions of the connection it follows or replaces).
    """

    def __init__(self, runner: FeedRunner, sink: FeedSink, seqs: Mapping[str, int]) -> None:
        self.runner = runner
        self.adapter = runner.adapter
        self.id = next(_CONNECTION_IDS)
        """Unique in the process: recordings keep connections apart by it."""
        self.session = FeedSession(
            runner.adapter,
            runner.instruments,
            sink=sink,
            counters=runner.counters,
            capture_depth=runner.capture_depth,
            halted=runner.halted,
        )
        self.session.continue_from(seqs)
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._ws: FeedSocket | None = None
        self.heard = 0
        """When anything (a frame, a pong) was last heard on this connection."""

    async def run(self) -> None:
        runner = self.runner
        url = self.adapter.stream_url(runner.instruments)
        async with runner.connect(url) as ws:
            runner.connections += 1
            standby = isinstance(self.session.sink, ShadowSink)
            runner.incident(None, IncidentKind.CONNECT, f"standby {url}" if standby else url)
            runner.record(self, FrameKind.CONNECT, "", url)
            await self._handshake(ws)
            await self._send_all(ws, self.adapter.subscribe_frames(runner.instruments))
            lost: Exception | None = None
            async with asyncio.TaskGroup() as group:
                self._group, self._ws = group, ws
                try:
                    self.session.start(runner.clock())
                    if self.adapter.rest_snapshots:
                        for name in list(self.session.syncs):  # not the halted ones
                            self._start_fetch(name)
                    if self.adapter.app_ping_interval > 0:
                        self._spawn(self._ping_forever(ws), "ping")
                    if self.adapter.idle_probe is not IdleProbe.NONE:
                        self._spawn(self._probe_when_idle(ws), "idle-probe")
                    self._spawn(self._watch_instruments(), "instrument-watch")
                    await self._receive_forever(ws)
                except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                    lost = exc
                    # Stale now, not after the closing handshake with a dead venue.
                    problem = SyncProblem(ProblemKind.DISCONNECTED, f"{type(exc).__name__}: {exc}")
                    self.session.connection_lost(problem, runner.clock())
                finally:
                    # Nothing of this connection may outlive it.
                    self._group = self._ws = None
                    for task in self._tasks:
                        task.cancel()
            if lost is not None:
                raise lost

    async def _handshake(self, ws: FeedSocket) -> None:
        """The venue's handshake (a login), when it has one: its frames sent, then frames
        read until its answer, within its timeout; ``HandshakeError`` if refused or
        unanswered. Frames before the answer are recorded, not interpreted (nothing is
        subscribed yet)."""
        handshake = self.adapter.handshake()
        if handshake is None:
            return
        await self._send_all(ws, list(handshake.frames))
        try:
            async with asyncio.timeout(handshake.timeout):
                while True:
                    frame = await ws.recv()
                    self.heard = self.runner.clock()
                    if self.runner.recorder is not None:
                        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                        self.runner.record(self, FrameKind.RECV, text)
                    answer = handshake.answer(frame)
                    if answer is not None:
                        break
        except TimeoutError:
            raise HandshakeError(
                f"no answer to the {handshake.name} within {handshake.timeout:g}s"
            ) from None
        if not answer.accepted:
            raise HandshakeError(
                f"{handshake.name} refused: code {answer.code}: {answer.detail}", answer.code
            )

    async def _receive_forever(self, ws: FeedSocket) -> None:
        """Hand every frame to the session until nothing at all (no frame, no pong) was
        heard for the venue's ``silence_timeout``. The deadline is not moved per frame:
        when it expires, it is armed again from the last thing heard."""
        adapter, runner = self.adapter, self.runner
        receive, clock, perform = self.session.receive, runner.clock, self._perform
        self.heard = clock()
        while True:
            silence = adapter.silence_timeout
            remaining = silence - (clock() - self.heard) / SECOND_NS
            if remaining <= 0:
                raise SilentConnectionError(f"nothing heard for {silence:g}s")
            # At most a second at a time: a changed ``silence_timeout`` applies soon.
            deadline = asyncio.timeout(min(remaining, _WATCH_PERIOD))
            try:
                async with deadline:
                    while True:
                        frame = await ws.recv()
                        self.heard = ts_recv = clock()
                        if runner.recorder is not None:
                            text = (
                                frame
                                if isinstance(frame, str)
                                else frame.decode("utf-8", "replace")
                            )
                            runner.record(self, FrameKind.RECV, text, ts=ts_recv)
                        actions = receive(frame, ts_recv)
                        if actions:
                            perform(actions)
            except TimeoutError:
                if not deadline.expired():
                    raise
                # Re-armed from the last thing heard (a frame, or a pong to a probe).

    async def _probe_when_idle(self, ws: FeedSocket) -> None:
        """Make a quiet connection say something before it counts as silent: after half
        the silence timeout with nothing heard, a websocket ping (its pong is heard) or
        the venue's application ping (answered with a frame)."""
        adapter, clock = self.adapter, self.runner.clock
        while True:
            idle_after = adapter.silence_timeout / 2
            idle = (clock() - self.heard) / SECOND_NS
            if idle < idle_after:
                await asyncio.sleep(idle_after - idle)
                continue
            if adapter.idle_probe is IdleProbe.NONE:
                await asyncio.sleep(idle_after)
                continue
            try:
                if adapter.idle_probe is IdleProbe.WEBSOCKET:
                    pong = await ws.ping()
                    await pong
                    self.heard = clock()
                    continue
                frame = adapter.app_ping_frame()  # fresh each time: venues number them
                if frame is not None:
                    await self._send_all(ws, [frame])
            except WebSocketException:
                return  # the connection is closing: the receive loop says why
            await asyncio.sleep(idle_after)

    async def _ping_forever(self, ws: FeedSocket) -> None:
        while True:
            await asyncio.sleep(self.adapter.app_ping_interval)
            frame = self.adapter.app_ping_frame()  # fresh each time: venues number them
            if frame is not None:
                await self._send_all(ws, [frame])

    async def _watch_instruments(self) -> None:
        """The session's per-instrument watchdog: a pass every second, or every quarter
        of the shortest instrument silence threshold; nothing on the hot path."""
        adapter = self.adapter
        while True:
            bounds = (adapter.instrument_silence_floor, adapter.instrument_silence_timeout)
            period = min(_WATCH_PERIOD, *(bound / 4 for bound in bounds if bound > 0))
            await asyncio.sleep(period)
            self._perform(self.session.tick(self.runner.clock()))

    # -- actions -----------------------------------------------------------------------

    def close(self, reason: str) -> bool:
        """Close the websocket (``run`` then ends as for a lost connection)."""
        ws = self._ws
        if ws is None:
            return False
        return self._spawn(ws.close(1000, reason[:100]), "close") is not None

    def _perform(self, actions: Actions) -> None:
        """Carry out what the session asked for."""
        for action in actions:
            if isinstance(action, RequestSnapshot):
                self._request_snapshot(action.instrument)
            elif isinstance(action, Refetch):
                self._start_fetch(action.instrument)
            elif isinstance(action, Reconnect):
                raise VenueClosingError(action.reason)

    def _request_snapshot(self, instrument: str) -> None:
        """A REST fetch, or the frames that make the venue send a fresh snapshot."""
        if self.adapter.rest_snapshots:
            self._start_fetch(instrument)
        elif self._ws is not None:
            frames = self.adapter.resubscribe_frames(instrument)
            self._spawn(self._send_all(self._ws, frames), f"resubscribe:{instrument}")

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
            actions = self.session.receive_event(event, self.runner.clock())
            if Refetch(instrument) in actions:  # older than the stream: this loop fetches again
                await asyncio.sleep(backoff.next_delay())
                continue
            self._perform(actions)
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
    """Cancel ``task`` and wait for it, whatever it ends with. A cancellation of the
    caller while it waits is not swallowed (a runner stopped mid-rotation must stop)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: it ended as it ended, while being cancelled
