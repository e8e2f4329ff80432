"""A running server prunes BBO rows and feed events older than ``retain_bbo_hours`` from
the database it starts on, while it keeps storing new ones; positions stay."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from app.runtime import RunningServer, serve
from app.settings import Settings, SimulatorSettings
from publish.storage import Batch, SqliteBackend
from publish.storage.backend import written
from publish.storage.retention import HOUR_NS
from tests.publish.storage.support import bbo, feed_event, position, query
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


async def test_old_market_data_is_pruned_and_positions_kept(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    long_ago = time.time_ns() - 3 * HOUR_NS
    backend = SqliteBackend(db)
    await backend.open()
    old = [replace(bbo(seq), ts_event=long_ago + seq, ts_recv=long_ago + seq) for seq in range(700)]
    await written(
        backend,
        Batch(
            bbo=old,
            feed_events=[feed_event(long_ago)],
            positions=[position("p-closed", closed_ts=long_ago)],
        ),
    )
    await backend.close()
    settings = Settings.demo().with_port(0).with_storage_path(str(db))
    settings = replace(
        settings,
        venues=tuple(venue for venue in settings.venues if venue.id == "binance"),
        simulator=SimulatorSettings(updates_per_second=50.0, seed=1),
        storage=replace(settings.storage, path=str(db), retain_bbo_hours=2.5),
    )
    ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, on_ready=ready.set_result))
    try:
        await asyncio.wait_for(ready, 30)

        def pruned_while_storing() -> bool:
            (old_rows, new_rows) = query(
                db,
                f"SELECT sum(ts_recv < {long_ago + HOUR_NS}), sum(ts_recv > {long_ago + HOUR_NS})"
                " FROM bbo",
            )[0]
            return old_rows == 0 and (new_rows or 0) > 0

        await eventually(pruned_while_storing, "old rows pruned, new ones stored", limit=30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert query(db, f"SELECT count(*) FROM feed_events WHERE ts < {long_ago + 1}") == [(0,)]
    assert query(db, "SELECT id FROM positions") == [("p-closed",)]
