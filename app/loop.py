"""Running a coroutine as the process: uvloop when installed, SIGINT/SIGTERM cancel it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("marketcast")


def run_until_signalled(coro: Coroutine[Any, Any, None]) -> int:
    """Run ``coro`` until it ends or SIGINT/SIGTERM cancels it (then it cleans up)."""

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await coro
        except asyncio.CancelledError:
            log.info("shutting down")

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(guarded())
    return 0


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
