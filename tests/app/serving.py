"""The whole server as ``marketcast run`` wires it (``app.runtime.serve``), for the span of
an ``async with``: ready on entry, cancelled (storage drained) on exit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from app.runtime import RunningServer, serve
from app.settings import Settings


@asynccontextmanager
async def running(
    settings: Settings, *, ready_within: float = 20.0
) -> AsyncIterator[RunningServer]:
    """``serve(settings)`` as a task until the block ends; ``ready_within`` seconds to
    start (a PostgreSQL schema to migrate takes longer than a SQLite file)."""
    ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, on_ready=ready.set_result))
    try:
        yield await asyncio.wait_for(ready, ready_within)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
