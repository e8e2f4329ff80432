"""Retention: old BBO rows and feed events deleted in bounded steps between flushes,
positions kept; pruning never runs beside a write."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from publish.storage import Batch, BboRow, SqliteBackend, StorageBackend, StorageFlusher
from publish.storage.retention import HOUR_NS, Retention
from tests.publish.storage.support import (
    RecordingBackend,
    Store,
    bbo,
    feed_event,
    position,
    running,
)

pytestmark = pytest.mark.timeout(30)

NOW = 1_700_000_000_000_500_000 + 10 * HOUR_NS
"""The retention's clock: ``bbo(n)`` rows are 10 hours old."""


async def test_retention_prunes_old_rows_step_by_step_and_keeps_positions(
    backend: StorageBackend, store: Store
) -> None:
    fresh = [BboRow(NOW - 1, NOW, "binance", "BTC-USDT", seq, 1, 2, 3, 4) for seq in (1000, 1001)]
    await backend.write_batch(
        Batch(
            bbo=[bbo(seq) for seq in range(23)] + fresh,
            feed_events=[feed_event(NOW - 9 * HOUR_NS), feed_event(NOW - HOUR_NS // 2)],
            positions=[position("p-1", closed_ts=NOW - 9 * HOUR_NS), position("p-2")],
        )
    )
    flusher = StorageFlusher(backend)
    retention = Retention(flusher, backend, retain_hours=1.5, batch_rows=5, clock=lambda: NOW)  # type: ignore[arg-type]
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
        await backend.write_batch(Batch(bbo=[bbo(0)]))
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
            pruning = asyncio.create_task(flusher.between_flushes(prune))
            for _ in range(20):
                await asyncio.sleep(0.002)
            assert log == []  # not beside the held write
            backend.gate.set()
            assert await pruning == 0
        assert log == ["prune after 1 commits"]
    finally:
        await backend.close()


def test_retention_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Retention(None, None, retain_hours=0)  # type: ignore[arg-type]
