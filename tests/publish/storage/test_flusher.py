from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from publish.storage import (
    BackendClosedError,
    Batch,
    FlusherStats,
    SqliteBackend,
    StorageFlusher,
    StorageHealth,
)
from publish.storage.backend import WriteDone
from publish.storage.flusher import BatchedCommit, InsertOutcome
from tests.publish.storage.support import (
    RecordingBackend,
    add_new_position,
    add_position,
    bbo,
    feed_event,
    position,
    query,
    running,
    stored_bbo,
)

pytestmark = pytest.mark.timeout(20)

STORED_POSITION = (
    "p-1",
    "acct-1",
    "binance:BTC-USDT",
    "buy",
    "0.5",
    "43000.1",
    1_700_000_000_000_000_000,
    None,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "marketcast.db"


@pytest.fixture
async def sqlite(db_path: Path) -> AsyncIterator[SqliteBackend]:
    backend = SqliteBackend(db_path)
    await backend.open()
    yield backend
    await backend.close()


def has_failed(backend: RecordingBackend, times: int) -> bool:
    return len(backend.failed) == times


def fast_retry_flusher(backend: RecordingBackend, **kwargs: Any) -> StorageFlusher:
    return StorageFlusher(backend, window_ms=1, retry_initial_ms=1, retry_max_ms=4, **kwargs)


async def test_rows_of_one_window_are_one_batch(sqlite: SqliteBackend, db_path: Path) -> None:
    backend = RecordingBackend(sqlite)
    durations = iter([1_000, 8_000, 20_000, 22_000])
    flushed: list[tuple[int, int]] = []
    flusher = StorageFlusher(
        backend,
        window_ms=50,
        clock=durations.__next__,
        on_flush=lambda ns, rows: flushed.append((ns, rows)),
    )
    async with running(flusher):
        # The loop runs in between: batching follows the window, not the call burst.
        flusher.add_bbo(bbo(1))
        await asyncio.sleep(0)
        flusher.add_feed_event(feed_event(5))
        await asyncio.sleep(0)
        ack = add_position(flusher, position())
        flusher.add_bbo(bbo(2))
        await ack
        flusher.add_bbo(bbo(3))
        await backend.wait_for(lambda: len(backend.committed) == 2)
        # Idle windows write nothing.
        await asyncio.sleep(0.2)

    assert backend.started == backend.committed
    assert backend.committed == [
        Batch(bbo=[bbo(1), bbo(2)], positions=[position()], feed_events=[feed_event(5)]),
        Batch(bbo=[bbo(3)]),
    ]
    assert stored_bbo(db_path) == [bbo(1), bbo(2), bbo(3)]
    assert query(db_path, "SELECT * FROM positions") == [STORED_POSITION]
    assert flushed == [(7_000, 4), (2_000, 1)]
    assert flusher.stats() == FlusherStats(
        health=StorageHealth.HEALTHY,
        batches=2,
        rows_written=5,
        pending_rows=0,
        failures=0,
        dropped_bbo_rows=0,
        dropped_feed_events=0,
        last_flush_ns=2_000,
        max_flush_ns=7_000,
    )


async def test_position_ack_resolves_only_after_commit(
    sqlite: SqliteBackend, db_path: Path
) -> None:
    backend = RecordingBackend(sqlite)
    backend.gate.clear()
    flusher = StorageFlusher(backend, window_ms=1)
    seen_at_ack: list[list[tuple[object, ...]]] = []
    async with running(flusher):
        ack = add_position(flusher, position())
        ack.add_done_callback(
            lambda _: seen_at_ack.append(query(db_path, "SELECT * FROM positions"))
        )
        await backend.wait_for(lambda: len(backend.started) == 1)
        assert not ack.done()
        assert flusher.pending_rows == 1
        assert query(db_path, "SELECT * FROM positions") == []
        backend.gate.set()
        await ack
    assert seen_at_ack == [[STORED_POSITION]]


async def test_after_commit_runs_right_behind_the_done_callbacks_of_a_committed_batch(
    sqlite: SqliteBackend,
) -> None:
    """Once per committed batch that resolved position futures, after every done callback
    those futures had (so whatever they queued is there), and before anything the loop
    was asked to run after them; a batch without positions and a failed write call none."""
    backend = RecordingBackend(sqlite, fail_first=1)
    events: list[str] = []
    loop = asyncio.get_running_loop()

    def resolved(name: str) -> Callable[[object], None]:
        def done(_: object) -> None:
            events.append(name)
            # Scheduled from a done callback: a turn later than ``after_commit``.
            loop.call_soon(events.append, f"{name}: soon after")

        return done

    flusher = fast_retry_flusher(backend, after_commit=lambda: events.append("after_commit"))
    async with running(flusher):
        flusher.add_bbo(bbo(1))
        changed = add_position(flusher, position("p-1"))
        changed.add_done_callback(resolved("changed"))
        new = add_new_position(flusher, position("p-2"))
        new.add_done_callback(resolved("new"))
        await asyncio.gather(changed, new)
        await backend.wait_for(lambda: len(events) == 5)
        assert len(backend.failed) == 1  # the failed attempt called nothing
        assert events == [
            "changed",
            "new",
            "after_commit",
            "changed: soon after",
            "new: soon after",
        ]
        flusher.add_bbo(bbo(2))
        await backend.wait_for(lambda: len(backend.committed) == 2)
        await asyncio.sleep(0)
    assert events.count("after_commit") == 1


class _Recorded:
    """A commit that is not a future: it records its outcome where it is told, and may
    fail as a waiter's own code can."""

    def __init__(self, name: str, told: list[tuple[str, object]], *, fails: bool = False):
        self._name = name
        self._told = told
        self._fails = fails

    def done(self) -> bool:
        return False

    def set_result(self, result: object, /) -> None:
        self._told.append((self._name, result))
        if self._fails:
            raise RuntimeError(f"{self._name} failed")


async def _told_flusher_with_p0(
    sqlite: SqliteBackend, told: list[tuple[str, object]]
) -> StorageFlusher:
    """A flusher whose ``after_commit`` is recorded in ``told``, with position p-0 stored
    (so that a new p-0 is a taken id) and ``told`` left empty."""
    flusher = StorageFlusher(sqlite, after_commit=lambda: told.append(("after_commit", None)))
    stored = add_new_position(flusher, position("p-0"))
    await flusher.drain()
    assert stored.result() is InsertOutcome.WRITTEN
    await asyncio.sleep(0)
    told.clear()
    return flusher


async def test_a_commit_that_is_not_a_future_is_told_in_the_flushers_turn(
    sqlite: SqliteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Each row's commit is resolved once its batch committed, in row order, before
    ``after_commit``; one whose own code raises is logged and the others are still told."""
    told: list[tuple[str, object]] = []
    flusher = await _told_flusher_with_p0(sqlite, told)
    flusher.add_position(position("p-1"), _Recorded("changed", told, fails=True))
    flusher.add_new_position(position("p-2"), _Recorded("new", told, fails=True))
    flusher.add_new_position(position("p-0", closed_ts=5), _Recorded("taken", told))
    await flusher.drain()
    await asyncio.sleep(0)
    assert told == [
        ("changed", None),
        ("new", InsertOutcome.WRITTEN),
        ("taken", InsertOutcome.ID_TAKEN),
        ("after_commit", None),
    ]
    assert [record.getMessage() for record in caplog.records] == [
        "resolving a position's commit failed"
    ] * 2


class _Batched(BatchedCommit):
    """A batched commit: each ``commit_batch`` call is recorded (the names and results
    it got, in order) where its first commit is told; a batch holding one that fails
    raises, as a waiter's own code can."""

    __slots__ = ("name", "told", "fails")

    def __init__(self, name: str, told: list[tuple[str, object]], *, fails: bool = False):
        self.name = name
        self.told = told
        self.fails = fails

    @classmethod
    def commit_batch(cls, commits: Sequence[_Batched], results: Sequence[object]) -> None:
        told = [(commit.name, result) for commit, result in zip(commits, results, strict=True)]
        commits[0].told.append(("batch", told))
        if any(commit.fails for commit in commits):
            raise RuntimeError("the batch failed")


async def test_batched_commits_are_told_in_one_call_per_batch(
    sqlite: SqliteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Commits of one ``BatchedCommit`` type are told in one ``commit_batch`` call per
    list (the changed positions', then the new ones'), with their results in row order;
    a list that mixes kinds is told one by one (a batched commit alone is a batch of
    one); a batch whose telling fails is logged, and the flusher goes on."""
    told: list[tuple[str, object]] = []
    flusher = await _told_flusher_with_p0(sqlite, told)

    flusher.add_position(position("p-1"), _Batched("changed", told))
    flusher.add_new_position(position("p-2"), _Batched("new", told))
    flusher.add_new_position(position("p-0", closed_ts=5), _Batched("taken", told))
    flusher.add_new_position(position("p-3"), _Batched("new too", told))
    await flusher.drain()
    await asyncio.sleep(0)
    assert told == [
        ("batch", [("changed", None)]),
        (
            "batch",
            [
                ("new", InsertOutcome.WRITTEN),
                ("taken", InsertOutcome.ID_TAKEN),
                ("new too", InsertOutcome.WRITTEN),
            ],
        ),
        ("after_commit", None),
    ]

    told.clear()
    flusher.add_new_position(position("p-4"), _Recorded("plain", told))
    flusher.add_new_position(position("p-5"), _Batched("alone", told))
    await flusher.drain()
    await asyncio.sleep(0)
    assert told == [
        ("plain", InsertOutcome.WRITTEN),
        ("batch", [("alone", InsertOutcome.WRITTEN)]),
        ("after_commit", None),
    ]

    told.clear()
    flusher.add_new_position(position("p-6"), _Batched("failing", told, fails=True))
    flusher.add_new_position(position("p-7"), _Batched("beside it", told))
    await flusher.drain()
    await asyncio.sleep(0)
    assert told == [
        ("batch", [("failing", InsertOutcome.WRITTEN), ("beside it", InsertOutcome.WRITTEN)]),
        ("after_commit", None),
    ]
    assert [record.getMessage() for record in caplog.records] == [
        "resolving a batch's commits failed"
    ]
    assert flusher.health is StorageHealth.HEALTHY


async def test_after_commit_runs_at_once_when_no_commit_was_a_future(
    sqlite: SqliteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Commits told at once leave nothing for a later turn: ``after_commit`` runs in the
    flusher's own turn, before anything the loop was asked meanwhile to run later (so the
    acks it flushes go out before the loop's next socket reads). A bug in it is logged
    and the flusher goes on."""
    told: list[tuple[str, object]] = []
    loop = asyncio.get_running_loop()

    class Told(_Recorded):
        """Also asks the loop for something later, as it is told."""

        def set_result(self, result: object, /) -> None:
            super().set_result(result)
            loop.call_soon(told.append, (f"{self._name}: soon after", None))

    def after_commit() -> None:
        told.append(("after_commit", None))
        if len(told) > 3:
            raise RuntimeError("after_commit failed")

    flusher = StorageFlusher(sqlite, after_commit=after_commit)
    flusher.add_new_position(position("p-1"), Told("new", told))
    await flusher.drain()
    await asyncio.sleep(0)
    assert told == [
        ("new", InsertOutcome.WRITTEN),
        ("after_commit", None),
        ("new: soon after", None),
    ]
    flusher.add_new_position(position("p-2"), Told("again", told))
    await flusher.drain()
    assert told[3:5] == [("again", InsertOutcome.WRITTEN), ("after_commit", None)]
    assert [record.getMessage() for record in caplog.records] == ["after_commit failed"]
    flusher.add_new_position(position("p-3"), Told("still", told))
    await flusher.drain()
    assert ("still", InsertOutcome.WRITTEN) in told


async def test_the_writer_thread_takes_a_batch_in_the_turn_the_flush_begins(
    sqlite: SqliteBackend, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a turn later, once the task that awaits the write first runs: between the two,
    the loop would serve every socket that became readable."""
    handed: list[Batch] = []
    write_batch = sqlite.write_batch

    def recording(batch: Batch, done: WriteDone) -> None:
        handed.append(batch)
        write_batch(batch, done)

    monkeypatch.setattr(sqlite, "write_batch", recording)
    flusher = StorageFlusher(sqlite)
    flusher.add_bbo(bbo(1))
    drained = asyncio.ensure_future(flusher.drain())
    await asyncio.sleep(0)  # the drain's first step has run, and nothing it scheduled
    assert handed == [Batch(bbo=[bbo(1)])]
    await drained
    assert stored_bbo(db_path) == [bbo(1)]


async def test_a_batch_is_answered_in_the_turn_the_loop_hears_it_committed(
    sqlite: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread schedules the flusher's answer itself: it runs in the turn that
    hears of the commit, not a turn later behind a future that wakes a task (between the
    two, the loop would serve every socket that became readable)."""
    loop = asyncio.get_running_loop()
    told: list[tuple[str, object]] = []
    insert_alone = sqlite._insert_alone_sync

    def heard() -> None:
        told.append(("the loop hears", None))
        # The loop may run this before the thread has told of the write: wait (blocking
        # the loop, as a long turn would) until the writer's one thread has finished the
        # job and its done callbacks, so the answer is on the loop before the next turn's
        # callback is. A future that woke a task would still come after it.
        assert sqlite._executor is not None
        sqlite._executor.submit(lambda: None).result(timeout=10)
        loop.call_soon(told.append, ("the next turn", None))

    def inserting(batch: Batch, inserts: list[Any]) -> frozenset[int]:
        taken = insert_alone(batch, inserts)
        loop.call_soon_threadsafe(heard)  # just before the thread tells of the write
        return taken

    monkeypatch.setattr(sqlite, "_insert_alone_sync", inserting)
    flusher = StorageFlusher(sqlite)
    flusher.add_new_position(position("p-1"), _Recorded("committed", told))
    await flusher.drain()
    await asyncio.sleep(0)
    assert told == [
        ("the loop hears", None),
        ("committed", InsertOutcome.WRITTEN),
        ("the next turn", None),
    ]


async def test_a_backend_raising_as_it_is_called_is_a_failed_write(
    sqlite: SqliteBackend, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals = [BackendClosedError("not open yet")]
    write_batch = sqlite.write_batch

    def refusing_once(batch: Batch, done: WriteDone) -> None:
        if refusals:
            raise refusals.pop()
        write_batch(batch, done)

    monkeypatch.setattr(sqlite, "write_batch", refusing_once)
    flusher = StorageFlusher(sqlite, window_ms=1, retry_initial_ms=1, retry_max_ms=4)
    async with running(flusher):
        ack = add_position(flusher, position())
        await ack
    assert query(db_path, "SELECT * FROM positions") == [STORED_POSITION]
    assert (flusher.stats().failures, flusher.health) == (1, StorageHealth.HEALTHY)


async def test_failed_writes_keep_the_rows_and_retry(sqlite: SqliteBackend, db_path: Path) -> None:
    backend = RecordingBackend(sqlite, fail_first=2)
    flusher = fast_retry_flusher(backend, clock=itertools.count(0, 1_000).__next__)
    async with running(flusher):
        ack = add_position(flusher, position())
        flusher.add_bbo(bbo(1))
        for failures in (1, 2):
            await backend.wait_for(partial(has_failed, backend, failures))
            assert not ack.done()
            assert flusher.health is StorageHealth.DEGRADED
            assert flusher.pending_rows == 2
        await ack
    written = Batch(bbo=[bbo(1)], positions=[position()])
    assert backend.failed == [written, written]
    assert backend.committed == [written]
    assert stored_bbo(db_path) == [bbo(1)]
    assert flusher.stats() == FlusherStats(
        health=StorageHealth.HEALTHY,
        batches=1,
        rows_written=2,
        pending_rows=0,
        failures=2,
        dropped_bbo_rows=0,
        dropped_feed_events=0,
        last_flush_ns=1_000,
        max_flush_ns=1_000,
    )


async def test_overflow_drops_the_oldest_bbo_rows_never_positions(
    sqlite: SqliteBackend, db_path: Path
) -> None:
    backend = RecordingBackend(sqlite, fail_first=1)
    backend.gate.clear()
    # A failed attempt reads the clock once, a committed one twice.
    flusher = fast_retry_flusher(
        backend, max_pending_rows=4, clock=itertools.count(0, 1_000).__next__
    )
    async with running(flusher):
        first_ack = add_position(flusher, position("p-1"))
        flusher.add_bbo(bbo(1))
        flusher.add_bbo(bbo(2))
        await backend.wait_for(lambda: len(backend.started) == 1)
        # While the first write hangs (and is going to fail), the buffer fills up.
        for seq in (3, 4, 5):
            flusher.add_bbo(bbo(seq))
        flusher.add_feed_event(feed_event(9))
        second_ack = add_position(flusher, position("p-2"))
        flusher.add_bbo(bbo(6))
        assert flusher.stats().dropped_bbo_rows == 1
        backend.gate.set()
        await asyncio.gather(first_ack, second_ack)

    # The failed batch went back in front of the newer rows, and the oldest BBO rows
    # made way; both positions are kept although the bound is exceeded.
    assert backend.committed == [
        Batch(
            bbo=[bbo(4), bbo(5), bbo(6)],
            positions=[position("p-1"), position("p-2")],
            feed_events=[feed_event(9)],
        )
    ]
    assert stored_bbo(db_path) == [bbo(4), bbo(5), bbo(6)]
    assert flusher.stats() == FlusherStats(
        health=StorageHealth.HEALTHY,
        batches=1,
        rows_written=6,
        pending_rows=0,
        failures=1,
        dropped_bbo_rows=3,
        dropped_feed_events=0,
        last_flush_ns=1_000,
        max_flush_ns=1_000,
    )


async def test_overflow_drops_feed_events_once_no_bbo_row_is_left(sqlite: SqliteBackend) -> None:
    backend = RecordingBackend(sqlite)
    flusher = StorageFlusher(backend, max_pending_rows=2)
    for ts in (1, 2, 3):
        flusher.add_feed_event(feed_event(ts))
    flusher.add_bbo(bbo(1))
    await flusher.drain()
    assert backend.committed == [Batch(feed_events=[feed_event(2), feed_event(3)])]
    assert (flusher.stats().dropped_bbo_rows, flusher.stats().dropped_feed_events) == (1, 1)


async def test_a_batch_takes_every_position_and_at_most_max_batch_rows_other_rows(
    sqlite: SqliteBackend, db_path: Path
) -> None:
    backend = RecordingBackend(sqlite)
    flusher = StorageFlusher(backend, window_ms=60_000, max_batch_rows=2)
    for seq in (1, 2, 3):
        flusher.add_bbo(bbo(seq))
    flusher.add_feed_event(feed_event(4))
    ack = add_position(flusher, position())
    flusher.add_feed_event(feed_event(5))
    await flusher.drain()
    assert ack.done()
    assert backend.committed == [
        Batch(bbo=[bbo(1), bbo(2)], positions=[position()]),
        Batch(bbo=[bbo(3)], feed_events=[feed_event(4)]),
        Batch(feed_events=[feed_event(5)]),
    ]
    assert stored_bbo(db_path) == [bbo(1), bbo(2), bbo(3)]
    assert flusher.pending_rows == 0


async def test_run_writes_the_rows_a_full_batch_left_without_new_rows(
    sqlite: SqliteBackend,
) -> None:
    backend = RecordingBackend(sqlite)
    flusher = StorageFlusher(backend, window_ms=1, max_batch_rows=1)
    for seq in (1, 2, 3):
        flusher.add_bbo(bbo(seq))
    async with running(flusher):
        await backend.wait_for(lambda: len(backend.committed) == 3)
    assert backend.committed == [Batch(bbo=[bbo(1)]), Batch(bbo=[bbo(2)]), Batch(bbo=[bbo(3)])]


async def test_drain_writes_everything_pending(sqlite: SqliteBackend, db_path: Path) -> None:
    backend = RecordingBackend(sqlite)
    flusher = StorageFlusher(backend, window_ms=60_000)
    ack = add_position(flusher, position())
    flusher.add_bbo(bbo(1))
    flusher.add_feed_event(feed_event(2))
    await flusher.drain()
    assert ack.done()
    assert backend.committed == [
        Batch(bbo=[bbo(1)], positions=[position()], feed_events=[feed_event(2)])
    ]
    assert query(db_path, "SELECT * FROM positions") == [STORED_POSITION]
    assert flusher.pending_rows == 0
    await flusher.drain()
    assert len(backend.started) == 1


@pytest.mark.parametrize("fail_first", [0, 1])
async def test_drain_settles_the_write_a_cancelled_run_left(
    sqlite: SqliteBackend, db_path: Path, fail_first: int
) -> None:
    backend = RecordingBackend(sqlite, fail_first=fail_first)
    backend.gate.clear()
    flusher = fast_retry_flusher(backend)
    async with running(flusher):
        ack = add_position(flusher, position())
        flusher.add_bbo(bbo(1))
        await backend.wait_for(lambda: len(backend.started) == 1)
    # run() is cancelled with its write still hanging; more rows come in meanwhile.
    flusher.add_bbo(bbo(2))
    assert flusher.pending_rows == 3
    backend.gate.set()
    await flusher.drain()

    assert ack.done()
    assert stored_bbo(db_path) == [bbo(1), bbo(2)]
    if fail_first:
        # The failed rows were requeued ahead of bbo(2) and written with it.
        assert backend.committed == [Batch(bbo=[bbo(1), bbo(2)], positions=[position()])]
    else:
        assert backend.committed == [
            Batch(bbo=[bbo(1)], positions=[position()]),
            Batch(bbo=[bbo(2)]),
        ]


async def test_a_locked_database_degrades_then_recovers(db_path: Path) -> None:
    sqlite = SqliteBackend(db_path, busy_timeout_ms=0)
    await sqlite.open()
    backend = RecordingBackend(sqlite)
    flusher = fast_retry_flusher(backend)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            async with running(flusher):
                ack = add_position(flusher, position())
                flusher.add_bbo(bbo(1))
                await backend.wait_for(lambda: len(backend.failed) >= 2)
                assert flusher.health is StorageHealth.DEGRADED
                assert not ack.done()
                other.execute("ROLLBACK")
                await ack
        finally:
            await sqlite.close()
    assert flusher.stats().health is StorageHealth.HEALTHY
    assert flusher.stats().failures == len(backend.failed)
    assert backend.committed == [Batch(bbo=[bbo(1)], positions=[position()])]
    assert stored_bbo(db_path) == [bbo(1)]
    assert query(db_path, "SELECT * FROM positions") == [STORED_POSITION]


async def test_a_slow_write_does_not_block_the_event_loop(db_path: Path) -> None:
    # The writer thread waits on another connection's lock (up to 10 s) while the
    # loop keeps running; only the loop can release the lock, so the commit must
    # come after it, and the write must not have failed first.
    sqlite = SqliteBackend(db_path, busy_timeout_ms=10_000)
    await sqlite.open()
    backend = RecordingBackend(sqlite)
    flusher = StorageFlusher(backend, window_ms=1)
    order: list[str] = []
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            async with running(flusher):
                ack = add_position(flusher, position())
                ack.add_done_callback(lambda _: order.append("committed"))
                await backend.wait_for(lambda: len(backend.started) == 1)
                for tick in range(3):
                    await asyncio.sleep(0.01)
                    order.append(f"tick {tick}")
                other.execute("ROLLBACK")
                order.append("released")
                await ack
        finally:
            await sqlite.close()
    assert order == ["tick 0", "tick 1", "tick 2", "released", "committed"]
    assert flusher.stats().failures == 0
    assert query(db_path, "SELECT * FROM positions") == [STORED_POSITION]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_ms": 0},
        {"retry_initial_ms": 0},
        {"retry_initial_ms": 10, "retry_max_ms": 5},
        {"max_pending_rows": 0},
        {"max_batch_rows": 0},
    ],
)
def test_invalid_settings_are_refused(sqlite: SqliteBackend, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        StorageFlusher(sqlite, **kwargs)  # type: ignore[arg-type]
