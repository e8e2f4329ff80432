"""Retention: old BBO rows and feed events deleted in bounded steps between flushes,
positions kept; pruning never runs beside a write."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from publish.storage import Batch, BboRow, SqliteBackend, StorageBackend, StorageFlusher
from publish.storage.backend import written
from publish.storage.postgres import PostgresBackend
from publish.storage.retention import HOUR_NS, Retention, next_batch_rows
from tests.postgres import PG_DSN, fresh_schema, pg_query
from tests.publish.storage.support import (
    RecordingBackend,
    Store,
    bbo,
    feed_event,
    position,
    query,
    running,
)
from tests.waiting import eventually, eventually_async

pytestmark = pytest.mark.timeout(30)

NOW = 1_700_000_000_000_500_000 + 10 * HOUR_NS
"""The retention's clock: ``bbo(n)`` rows are 10 hours old."""


async def test_retention_prunes_old_rows_step_by_step_and_keeps_positions(
    backend: StorageBackend, store: Store
) -> None:
    fresh = [BboRow(NOW - 1, NOW, "binance", "BTC-USDT", seq, 1, 2, 3, 4) for seq in (1000, 1001)]
    await written(
        backend,
        Batch(
            bbo=[bbo(seq) for seq in range(23)] + fresh,
            feed_events=[feed_event(NOW - 9 * HOUR_NS), feed_event(NOW - HOUR_NS // 2)],
            positions=[position("p-1", closed_ts=NOW - 9 * HOUR_NS), position("p-2")],
        ),
    )
    flusher = StorageFlusher(backend)
    retention = Retention(
        flusher,
        backend,  # type: ignore[arg-type]
        retain_hours=1.5,
        batch_rows=5,
        min_batch_rows=5,
        max_batch_rows=5,
        clock=lambda: NOW,
    )
    async with running(flusher):
        while await retention.step():
            pass
    assert retention.deleted == 23 and retention.steps == 5
    assert await store.read("SELECT seq FROM {s}.bbo ORDER BY seq") == [(1000,), (1001,)]
    assert await store.read("SELECT ts FROM {s}.feed_events") == [(NOW - HOUR_NS // 2,)]
    assert sorted(await store.read("SELECT id FROM {s}.positions")) == [("p-1",), ("p-2",)]


async def test_fractions_of_an_hour_are_honoured(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "m.db")
    await backend.open()
    try:
        await written(backend, Batch(bbo=[bbo(0)]))
        flusher = StorageFlusher(backend)
        ts_recv = bbo(0).ts_recv
        kept = Retention(flusher, backend, retain_hours=0.25, clock=lambda: ts_recv + HOUR_NS // 4)
        assert not await kept.step() and kept.deleted == 0
        gone = Retention(
            flusher, backend, retain_hours=0.25, clock=lambda: ts_recv + HOUR_NS // 4 + 1
        )
        assert not await gone.step() and gone.deleted == 1
    finally:
        await backend.close()


async def test_pruning_waits_for_a_write_in_flight(tmp_path: Path) -> None:
    inner = SqliteBackend(tmp_path / "m.db")
    backend = RecordingBackend(inner)
    await backend.open()
    try:
        flusher = StorageFlusher(backend, window_ms=1)
        backend.gate.clear()  # the next write starts and is held
        log: list[str] = []

        async def prune() -> int:
            log.append(f"prune after {len(backend.committed)} commits")
            return await inner.prune(0, 10)

        async with running(flusher):
            flusher.add_bbo(bbo(1))
            await backend.wait_for(lambda: len(backend.started) == 1)
            pruning = asyncio.create_task(flusher.between_flushes(prune, room=0.001))
            for _ in range(20):
                await asyncio.sleep(0.002)
            assert log == []  # not beside the held write
            backend.gate.set()
            assert await pruning == 0
        assert log == ["prune after 1 commits"]
    finally:
        await backend.close()


async def test_a_step_starts_only_with_room_before_the_next_flush(tmp_path: Path) -> None:
    backend = RecordingBackend(SqliteBackend(tmp_path / "m.db"))
    await backend.open()
    try:
        flusher = StorageFlusher(backend, window_ms=1_000)
        seen: list[int] = []

        async def job() -> None:
            seen.append(len(backend.committed))

        async with running(flusher):
            flusher.add_bbo(bbo(1))  # the next flush is due in a second
            # Room enough before it: the step runs while the row waits.
            await flusher.between_flushes(job, room=0.1)
            # Less room than a step needs: it waits for that flush.
            await flusher.between_flushes(job, room=2.0)
            # Nothing waiting: no flush is due for a whole window.
            await flusher.between_flushes(job, room=2.0)
        assert seen == [0, 1, 1]
    finally:
        await backend.close()


async def test_a_flush_due_during_a_step_goes_before_the_next_step(tmp_path: Path) -> None:
    backend = RecordingBackend(SqliteBackend(tmp_path / "m.db"))
    await backend.open()
    try:
        flusher = StorageFlusher(backend, window_ms=5)
        log: list[str] = []

        async def overrunning_step() -> None:
            flusher.add_bbo(bbo(1))
            # The step outlasts the window: the flush falls due and waits for the lock.
            await asyncio.sleep(0.05)
            log.append(f"step 1 ended after {len(backend.committed)} commits")

        async def step() -> None:
            log.append(f"step 2 after {len(backend.committed)} commits")

        async with running(flusher):
            await flusher.between_flushes(overrunning_step, room=0.001)
            await flusher.between_flushes(step, room=0.001)
        assert log == ["step 1 ended after 0 commits", "step 2 after 1 commits"]
    finally:
        await backend.close()


async def test_a_step_beside_the_writes_lets_a_flush_commit_meanwhile(tmp_path: Path) -> None:
    backend = RecordingBackend(SqliteBackend(tmp_path / "m.db"))
    await backend.open()
    try:
        flusher = StorageFlusher(backend, window_ms=5)

        async def step_on_its_own_connection() -> None:
            flusher.add_bbo(bbo(1))
            await backend.wait_for(lambda: len(backend.committed) == 1)

        async with running(flusher):
            await asyncio.wait_for(
                flusher.between_flushes(step_on_its_own_connection, room=0.001, exclusive=False),
                10,
            )
    finally:
        await backend.close()


async def test_a_postgres_step_never_holds_up_a_flush(tmp_path: Path) -> None:
    """The step waits on a lock another session holds; the flusher commits meanwhile."""
    async with fresh_schema() as schema:
        backend = PostgresBackend(PG_DSN, schema=schema)
        await backend.open()
        try:
            await written(backend, Batch(bbo=[bbo(1)], feed_events=[feed_event(1)]))
            flusher = StorageFlusher(backend, window_ms=5)
            retention = Retention(flusher, backend, retain_hours=1, clock=lambda: NOW)
            assert not backend.prune_blocks_writes
            blocker = await asyncpg.connect(PG_DSN)
            try:
                async with running(flusher):
                    locked = blocker.transaction()
                    await locked.start()
                    await blocker.execute(f'LOCK TABLE "{schema}".feed_events')
                    step = asyncio.create_task(retention.step())
                    await eventually_async(lambda: waits_on_a_lock(backend), "the step waits")
                    flusher.add_bbo(BboRow(NOW, NOW, "binance", "BTC-USDT", 2, 1, 2, 3, 4))
                    await eventually(lambda: flusher.stats().batches == 1, "the flush committed")
                    assert not step.done()
                    await locked.rollback()
                    assert await asyncio.wait_for(step, 10) is False
            finally:
                await blocker.close()
            assert retention.deleted == 1
        finally:
            await backend.close()


async def waits_on_a_lock(backend: PostgresBackend) -> bool:
    (waiting,) = await pg_query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND wait_event_type = 'Lock'",
        backend.application_name,
    )
    return bool(waiting[0])


class SteppedTimer:
    """A step-duration clock: each step reads it twice, and the second reading is the
    first plus the next of ``durations``."""

    def __init__(self, durations: list[int]) -> None:
        self.durations = durations
        self.now = 0
        self.readings = 0

    def __call__(self) -> int:
        self.readings += 1
        if self.readings % 2 == 0:
            self.now += self.durations.pop(0)
        return self.now


async def test_the_step_size_follows_the_measured_durations(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "m.db")
    await backend.open()
    try:
        await written(backend, Batch(bbo=[bbo(seq) for seq in range(3_000)]))
        flusher = StorageFlusher(backend)
        micros = 1_000
        timer = SteppedTimer([micros * took for took in (100, 250, 2_000, 5_000, 500, 800, 300)])
        retention = Retention(
            flusher,
            backend,
            retain_hours=1,
            budget_ms=1,
            batch_rows=100,
            min_batch_rows=10,
            max_batch_rows=1_000,
            clock=lambda: NOW,
            timer=timer,
        )
        sizes = [retention.batch_rows]
        for _ in range(7):
            assert await retention.step()  # each one full: 3,000 old rows
            sizes.append(retention.batch_rows)
        # Budget 1 ms: under half of it, grow (x2 at most); over it, shrink to take half
        # of it (/4 at most); in between, stay.
        assert sizes == [100, 200, 400, 100, 25, 25, 25, 41]
        assert retention.deleted == sum(sizes[:-1])
        assert query(tmp_path / "m.db", "SELECT count(*) FROM bbo") == [(3_000 - sum(sizes[:-1]),)]
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("rows", "deleted", "took_us", "expected"),
    [
        (100, 100, 250, 200),  # half the aim (half the budget), full: twice as many
        (100, 100, 400, 125),  # a little under the aim: in proportion
        (10, 10, 450, 12),  # a step that is mostly fixed cost: a quarter more at least
        (100, 100, 500, 100),  # between the aim and the budget: as it is
        (100, 100, 1_000, 100),  # on the budget
        (100, 40, 100, 100),  # fewer old rows than asked: nothing learnt
        (100, 100, 1_250, 40),  # over the budget: in proportion, to the aim
        (100, 3, 2_000, 25),  # slow, even though it found few rows
        (100, 100, 50_000, 25),  # a stall: a quarter at most
        (16, 16, 5_000, 10),  # never below the lowest
        (900, 900, 1, 1_000),  # never above the highest
        (100, 100, 0, 200),  # a step too short to measure
    ],
)
def test_next_batch_rows(rows: int, deleted: int, took_us: int, expected: int) -> None:
    assert next_batch_rows(rows, deleted, took_us * 1_000, 1_000_000, 10, 1_000) == expected


def test_retention_refuses_nonsense(tmp_path: Path) -> None:
    flusher = StorageFlusher(SqliteBackend(tmp_path / "m.db"))
    with pytest.raises(ValueError):
        Retention(flusher, SqliteBackend(tmp_path / "m.db"), retain_hours=0)
    with pytest.raises(ValueError):
        Retention(flusher, SqliteBackend(tmp_path / "m.db"), retain_hours=1, batch_rows=0)
