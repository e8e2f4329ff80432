"""Group-commit storage flusher: rows collect in memory and go out one batch per window.

The first row that arrives while nothing is buffered opens a window; ``window_ms``
later everything buffered is swapped out and written as one ``Batch`` (one
transaction). Rows that arrive during a write open the next window, and a write that
took longer than a window is followed straight away by the next one, so under load
batches run back to back and an idle flusher does not wake up at all.

A batch holds at most ``max_batch_rows`` BBO and feed-event rows (every buffered
position goes in regardless); the rest stay buffered, oldest first, and the next batch
is written straight away. Without the cap one slow commit (a checkpoint, a vacuum) lets
the next batch grow by its whole duration, which makes that write slow too, and batches
snowball into tens of thousands of rows; with it every write stays short and a backlog
drains as a run of back-to-back bounded batches.

``add_new_position`` (an open) and ``add_position`` (a change of a stored position)
take the row's ``Commit``, resolved when the batch holding the row has committed: every
position of a window shares one commit (group commit), and an acknowledgement sent on
it means the position is in the database. A new position is written only if its account
has not used its id yet, checked inside that commit's transaction (no lookup of its
own): its commit says ``WRITTEN`` or ``ID_TAKEN``. A ``Commit`` is an ``asyncio.Future``
or any object answering the same two calls; the position book passes its change in
progress itself, which is told at once, in the flusher's turn: no future, no loop
callback and no closure per op, and a batch's changes together, in one call
(``BatchedCommit``). ``after_commit`` runs once a committed batch's commits are resolved
(and a future's done callbacks have run): at once in the flusher's turn when no commit
was a future, so whatever they queued (the acks) goes out before the loop's next socket
reads.

That turn is the first one that hears the write ended: the backend calls the flusher's
``done`` itself (``StorageBackend.write_batch``); SQLite's writer thread schedules it on
the loop. A future that woke a task would add a turn, and the socket reads in it, to
every ack (about a third of the time from the commit to its acks: docs/performance.md).

When a write fails the rows go back to the front of the buffer and the flusher retries
with capped exponential backoff (``degraded`` until a write succeeds). Meanwhile the
buffer is bounded: past ``max_pending_rows`` BBO and feed-event rows the oldest BBO rows
are dropped first, then the oldest feed events; positions are never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Protocol, Self, TypeVar, cast

from publish.storage.backend import Batch, StorageBackend, WriteOutcome
from publish.storage.rows import BboRow, FeedEventRow, PositionRow

logger = logging.getLogger(__name__)

_Row = TypeVar("_Row", BboRow, FeedEventRow)
_T = TypeVar("_T")
_R_contra = TypeVar("_R_contra", contravariant=True)


class StorageHealth(StrEnum):
    """``degraded`` from a failed write until the next write succeeds."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"


class InsertOutcome(StrEnum):
    """What became of a new position (``add_new_position``) once its batch committed."""

    WRITTEN = "written"
    """Stored (or found already stored, identical: an earlier attempt that committed)."""
    ID_TAKEN = "id_taken"
    """Not written: the account already has, had or archived a position with this id."""


class Commit(Protocol[_R_contra]):
    """What waits for a position row's commit: an ``asyncio.Future`` answers to it, and so
    may any object that takes the result the same way (without a future's loop callback).
    ``set_result`` is called once, on the event loop, unless ``done`` is already true (a
    cancelled future: only its wait stops, the row is still written)."""

    def done(self) -> bool: ...

    def set_result(self, result: _R_contra, /) -> None: ...


class BatchedCommit:
    """A ``Commit`` that its batch tells together with the others of its type: when every
    commit of a batch's list (its changed positions', or its new positions') is of one
    ``BatchedCommit`` type, the flusher makes one ``commit_batch`` call with all of them
    and their results, in row order, instead of a ``set_result`` per row. The position
    book's changes are: one loop over a batch's opens instead of a chain of five calls
    per open (2,000 and 8,500 fewer instructions an open of some 160,000 in two
    alternated counts, ``python -m bench opcost``'s servers). Alone (a batch that mixes
    kinds), each is told by ``set_result``, which is ``commit_batch`` of one.
    ``commit_batch`` must tell every commit even when telling one of them fails (log it
    and go on), as the flusher does for single commits."""

    __slots__ = ()

    def done(self) -> bool:
        return False  # decided once, by its one commit

    def set_result(self, result: object, /) -> None:
        type(self).commit_batch([self], [result])

    @classmethod
    def commit_batch(cls, commits: Sequence[Self], results: Sequence[object]) -> None:
        raise NotImplementedError


_Waiters = tuple[list[Commit[None]], list[Commit[InsertOutcome]]]
"""The commits of a batch's ``positions`` and of its ``new_positions``, in row order."""


@dataclass(frozen=True, slots=True)
class FlusherStats:
    """Counters since the flusher was created; durations in the ``clock``'s nanoseconds."""

    health: StorageHealth
    batches: int
    """Committed batches."""
    rows_written: int
    """Rows committed (a new position refused for its taken id is not one)."""
    pending_rows: int
    """Rows not committed yet: buffered plus the batch being written."""
    failures: int
    """Failed write attempts (each retry that fails counts again)."""
    dropped_bbo_rows: int
    dropped_feed_events: int
    last_flush_ns: int
    """How long the last committed batch took to write."""
    max_flush_ns: int


class StorageFlusher:
    """Batches rows into one backend transaction per window; see the module docstring.

    Run ``run()`` as a task; on shutdown cancel it, then await ``drain()``. The ``add_*``
    methods are the hot path: O(1) (an append; past the bound, one ``popleft`` too).
    ``on_flush(duration_ns, rows)`` is called after each committed batch (histograms).
    ``after_commit()`` runs after each committed batch that resolved position commits,
    once whatever resolving them queued is there. When every commit was told at once (a
    ``Commit`` that is not a future, as the position book's), that is right away, in the
    flusher's own turn: the acks queued meanwhile then go out before the loop reads its
    sockets again, not a turn later. When a commit was an ``asyncio.Future``, it is
    scheduled (``call_soon``) behind the future's done callbacks, which asyncio runs in
    the order they were scheduled, so it runs right after them, in the same turn of the
    loop. A bug in ``after_commit`` called at once is logged, as a loop callback's is.
    """

    def __init__(
        self,
        backend: StorageBackend,
        *,
        window_ms: float = 5.0,
        max_pending_rows: int = 200_000,
        max_batch_rows: int = 2_000,
        retry_initial_ms: float = 50.0,
        retry_max_ms: float = 2_000.0,
        clock: Callable[[], int] = time.perf_counter_ns,
        on_flush: Callable[[int, int], None] | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        if window_ms <= 0 or retry_initial_ms <= 0:
            raise ValueError("window_ms and retry_initial_ms must be positive")
        if retry_max_ms < retry_initial_ms:
            raise ValueError("retry_max_ms must be at least retry_initial_ms")
        if max_pending_rows < 1 or max_batch_rows < 1:
            raise ValueError("max_pending_rows and max_batch_rows must be at least 1")
        self._backend = backend
        self._window = window_ms / 1000
        self._max_pending = max_pending_rows
        self._max_batch = max_batch_rows
        self._retry_initial = retry_initial_ms / 1000
        self._retry_max = retry_max_ms / 1000
        self._clock = clock
        self._on_flush = on_flush
        self._after_commit = after_commit

        self._bbo: deque[BboRow] = deque()
        self._feed_events: deque[FeedEventRow] = deque()
        self._positions: list[PositionRow] = []
        self._waiters: list[Commit[None]] = []
        self._new_positions: list[PositionRow] = []
        self._new_waiters: list[Commit[InsertOutcome]] = []
        # Set while rows are buffered; _window_opened is the loop time the first came in.
        self._rows_waiting = asyncio.Event()
        self._window_opened = 0.0
        # Serializes writes between run() and drain(). _inflight outlives a cancelled
        # caller, so the next flush waits for that write to settle before taking rows.
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[bool] | None = None
        self._inflight_rows = 0
        # Set (and replaced by a new one) when a write attempt ends: between_flushes waits
        # on it for the next gap.
        self._write_ended = asyncio.Event()

        self._health = StorageHealth.HEALTHY
        self._dropping = False
        self._batches = 0
        self._rows_written = 0
        self._failures = 0
        self._dropped_bbo = 0
        self._dropped_feed_events = 0
        self._last_flush_ns = 0
        self._max_flush_ns = 0

    def add_bbo(self, row: BboRow) -> None:
        self._open_window_if_idle()
        self._bbo.append(row)
        if len(self._bbo) + len(self._feed_events) > self._max_pending:
            self._trim()

    def add_feed_event(self, row: FeedEventRow) -> None:
        self._open_window_if_idle()
        self._feed_events.append(row)
        if len(self._bbo) + len(self._feed_events) > self._max_pending:
            self._trim()

    def add_position(self, row: PositionRow, commit: Commit[None]) -> None:
        """Queue a change of a stored position (an upsert); ``commit`` is resolved once its
        batch has committed.

        It stays pending through failed writes until a retry commits. Cancelling a
        future only stops the wait: the row is still written.
        """
        self._open_window_if_idle()
        self._positions.append(row)
        self._waiters.append(commit)

    def add_new_position(self, row: PositionRow, commit: Commit[InsertOutcome]) -> None:
        """Queue a new position, written only if its ``(account, id)`` is free; ``commit``
        is resolved once its batch has committed, with what became of it. Pending through
        failed writes and cancellable as for ``add_position``."""
        self._open_window_if_idle()
        self._new_positions.append(row)
        self._new_waiters.append(commit)

    @property
    def health(self) -> StorageHealth:
        return self._health

    @property
    def window_ms(self) -> float:
        return self._window * 1000

    @property
    def pending_rows(self) -> int:
        return self._buffered_rows() + self._inflight_rows

    def stats(self) -> FlusherStats:
        return FlusherStats(
            health=self._health,
            batches=self._batches,
            rows_written=self._rows_written,
            pending_rows=self.pending_rows,
            failures=self._failures,
            dropped_bbo_rows=self._dropped_bbo,
            dropped_feed_events=self._dropped_feed_events,
            last_flush_ns=self._last_flush_ns,
            max_flush_ns=self._max_flush_ns,
        )

    async def run(self) -> None:
        """Write one batch per window, forever (until cancelled)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._rows_waiting.wait()
            delay = self._window_opened + self._window - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._flush_retrying()

    async def drain(self) -> None:
        """Write everything pending, including a write a cancelled ``run()`` left going.

        Retries like ``run()`` until all is written, so bound it with ``asyncio.timeout``
        where the database may be down at shutdown.
        """
        while self._inflight is not None or self._buffered_rows():
            await self._flush_retrying()

    async def between_flushes(
        self, job: Callable[[], Awaitable[_T]], *, room: float, exclusive: bool = True
    ) -> _T:
        """Run ``job`` (maintenance on the same database: pruning) in a gap between writes:
        it starts only while no write is in flight and the next one is due ``room``
        seconds later or more (or no row is waiting, so none is due for a whole window).
        Otherwise it waits for the end of the next write and looks again.

        ``exclusive``: hold the write lock while ``job`` runs, for a backend whose writes
        and ``job`` share one connection or thread (SQLite's writer thread): a write that
        falls due meanwhile waits for ``job``, so ``job`` must take less than ``room``.
        Without it (PostgreSQL: ``job`` on a connection of its own) writes go on beside
        ``job``. Either way one call runs ``job`` once: a caller repeating it (steps)
        goes through the gap check again, so a write that fell due goes first."""
        loop = asyncio.get_running_loop()
        while True:
            write_ended = self._write_ended
            if self._in_gap(loop.time(), room):
                if not exclusive:
                    return await job()
                async with self._lock:
                    if self._in_gap(loop.time(), room):
                        return await job()
            await write_ended.wait()

    def _in_gap(self, now: float, room: float) -> bool:
        if self._inflight is not None:
            return False
        if not self._rows_waiting.is_set():
            return True
        return self._window_opened + self._window - now >= room

    async def _flush_retrying(self) -> None:
        delay = self._retry_initial
        while not await self._flush():
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _flush(self) -> bool:
        """Write everything buffered as one batch; False if the write failed (rows kept)."""
        async with self._lock:
            if self._inflight is not None:
                # Left by a cancelled caller: if it fails, its rows must be requeued
                # ahead of the ones buffered since.
                await asyncio.shield(self._inflight)
            batch, waiters = self._take()
            if not batch:
                return True
            self._inflight_rows = len(batch)
            inflight = self._inflight = asyncio.get_running_loop().create_future()
            done = partial(self._written, batch, waiters, self._clock(), inflight)
            try:
                self._backend.write_batch(batch, done)
            except Exception as error:  # the call's own error is the write's
                done(error)
            return await asyncio.shield(inflight)

    def _written(
        self,
        batch: Batch,
        waiters: _Waiters,
        started: int,
        inflight: asyncio.Future[bool],
        outcome: WriteOutcome,
    ) -> None:
        """The backend's ``done``: the batch committed (``outcome``: the new positions
        whose id is taken) or failed. Runs as soon as the loop hears of it (see
        ``StorageBackend.write_batch``), so the commits are resolved in that turn."""
        self._inflight = None
        self._inflight_rows = 0
        write_ended, self._write_ended = self._write_ended, asyncio.Event()
        write_ended.set()
        try:
            if isinstance(outcome, BaseException):
                self._failed(batch, waiters, outcome)
            else:
                self._committed(batch, waiters, outcome, self._clock() - started)
        finally:  # whatever a listener did, the next flush must not wait forever
            inflight.set_result(not isinstance(outcome, BaseException))

    def _failed(self, batch: Batch, waiters: _Waiters, error: BaseException) -> None:
        # The retry policy lives here: count it, log once per outage, keep the rows.
        self._failures += 1
        if self._health is StorageHealth.HEALTHY:
            logger.warning(
                "storage %s: write of %d rows failed, retrying",
                self._backend.name,
                len(batch),
                exc_info=error,
            )
        self._health = StorageHealth.DEGRADED
        self._requeue(batch, waiters)

    def _committed(
        self, batch: Batch, waiters: _Waiters, taken: frozenset[int], duration: int
    ) -> None:
        self._batches += 1
        self._rows_written += len(batch) - len(taken)
        self._last_flush_ns = duration
        self._max_flush_ns = max(self._max_flush_ns, duration)
        if self._health is StorageHealth.DEGRADED:
            logger.warning(
                "storage %s: writing again after %d failed attempts in total",
                self._backend.name,
                self._failures,
            )
            self._health = StorageHealth.HEALTHY
        self._dropping = False
        changed, new = waiters
        futures = resolve_commits(changed, [None] * len(changed))
        outcomes = [
            InsertOutcome.ID_TAKEN if index in taken else InsertOutcome.WRITTEN
            for index in range(len(new))
        ]
        futures |= resolve_commits(new, outcomes)
        if self._after_commit is not None and (changed or new):
            if futures:
                asyncio.get_running_loop().call_soon(self._after_commit)
            else:
                self._call_after_commit()
        if self._on_flush is not None:
            self._on_flush(duration, len(batch))

    def _call_after_commit(self) -> None:
        assert self._after_commit is not None
        try:
            self._after_commit()
        except Exception:  # as the loop does for a callback: the write itself succeeded
            logger.exception("after_commit failed")

    def _open_window_if_idle(self) -> None:
        if not self._rows_waiting.is_set():
            self._window_opened = asyncio.get_running_loop().time()
            self._rows_waiting.set()

    def _buffered_rows(self) -> int:
        return (
            len(self._bbo)
            + len(self._feed_events)
            + len(self._positions)
            + len(self._new_positions)
        )

    def _take(self) -> tuple[Batch, _Waiters]:
        """Every buffered position and up to ``max_batch_rows`` of the oldest BBO and feed
        event rows. O(rows taken). Rows left behind keep the window open (its opening time
        is past, so ``run()`` writes them next without waiting)."""
        bbo = _pop_left(self._bbo, self._max_batch)
        feed_events = _pop_left(self._feed_events, self._max_batch - len(bbo))
        batch = Batch(
            bbo=bbo,
            positions=self._positions,
            feed_events=feed_events,
            new_positions=self._new_positions,
        )
        waiters = (self._waiters, self._new_waiters)
        self._positions = []
        self._waiters = []
        self._new_positions = []
        self._new_waiters = []
        if not self._bbo and not self._feed_events:
            self._rows_waiting.clear()
        return batch, waiters

    def _requeue(self, batch: Batch, waiters: _Waiters) -> None:
        self._open_window_if_idle()
        self._bbo.extendleft(reversed(batch.bbo))
        self._feed_events.extendleft(reversed(batch.feed_events))
        self._positions[:0] = batch.positions
        self._waiters[:0] = waiters[0]
        self._new_positions[:0] = batch.new_positions
        self._new_waiters[:0] = waiters[1]
        self._trim()

    def _trim(self) -> None:
        excess = len(self._bbo) + len(self._feed_events) - self._max_pending
        if excess <= 0:
            return
        from_bbo = min(excess, len(self._bbo))
        for _ in range(from_bbo):
            self._bbo.popleft()
        for _ in range(excess - from_bbo):
            self._feed_events.popleft()
        self._dropped_bbo += from_bbo
        self._dropped_feed_events += excess - from_bbo
        if not self._dropping:
            self._dropping = True
            logger.warning(
                "storage %s: buffer full (%d rows), dropping the oldest BBO rows",
                self._backend.name,
                self._max_pending,
            )


def resolve_commits(commits: Sequence[Commit[_T]], results: Sequence[_T]) -> bool:
    """Resolve a batch's commits with their results, in row order: in one call when all
    are ``BatchedCommit``s of one type, else one by one (``_resolve``). True if any is an
    ``asyncio.Future``. O(commits)."""
    if not commits:
        return False
    kind = type(commits[0])
    if issubclass(kind, BatchedCommit) and all(type(commit) is kind for commit in commits):
        try:
            kind.commit_batch(cast(Sequence[BatchedCommit], commits), results)
        except Exception:
            logger.exception("resolving a batch's commits failed")
        return False
    futures = False
    for commit, result in zip(commits, results, strict=True):
        futures |= _resolve(commit, result)
    return futures


def _resolve(commit: Commit[_T], result: _T) -> bool:
    """Resolve one row's commit; a bug in a waiter's own code is logged, and must not keep
    the batch's other commits from being resolved. True for an ``asyncio.Future``, whose
    done callbacks run a turn later."""
    try:
        if not commit.done():
            commit.set_result(result)
    except Exception:
        logger.exception("resolving a position's commit failed")
    return isinstance(commit, asyncio.Future)


def _pop_left(rows: deque[_Row], count: int) -> list[_Row]:
    """Up to ``count`` rows off the left of ``rows``, in order."""
    if count >= len(rows):
        taken = list(rows)
        rows.clear()
        return taken
    return [rows.popleft() for _ in range(count)]
