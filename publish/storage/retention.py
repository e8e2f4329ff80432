"""Retention: BBO rows and feed events older than ``[storage].retain_bbo_hours`` are
deleted in small steps between the flusher's batches; positions are never deleted.

Each step deletes at most ``batch_rows`` BBO rows and as many feed events, oldest first,
in one short transaction, and only runs where it delays no flush
(``StorageFlusher.between_flushes``). Steps follow each other while there is old data
(a backlog after a long stop drains at one step per gap between batches) and pause
``idle_seconds`` once it is gone. A failed step (the database is down) is logged once and
retried after the pause; it never stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from publish.storage.backend import PrunableBackend
from publish.storage.flusher import StorageFlusher

log = logging.getLogger(__name__)

HOUR_NS = 3_600 * 10**9
BATCH_ROWS = 500
"""Rows of each table one step deletes at most: ~0.5-1 ms of SQLite's writer thread."""


class Retention:
    """Run ``run()`` as a task beside the flusher's; see the module docstring."""

    def __init__(
        self,
        flusher: StorageFlusher,
        backend: PrunableBackend,
        *,
        retain_hours: float,
        batch_rows: int = BATCH_ROWS,
        idle_seconds: float = 1.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if retain_hours <= 0 or batch_rows < 1 or idle_seconds <= 0:
            raise ValueError("retain_hours, batch_rows and idle_seconds must be positive")
        self._flusher = flusher
        self._backend = backend
        self._retain_ns = int(retain_hours * HOUR_NS)
        self._batch_rows = batch_rows
        self._idle = idle_seconds
        self._clock = clock
        self.steps = 0
        self.deleted = 0
        """Rows deleted so far (per step: the larger of its BBO and feed-event counts)."""
        self.failures = 0

    async def run(self) -> None:
        """Prune forever (until cancelled)."""
        while True:
            more = await self.step()
            await asyncio.sleep(0 if more else self._idle)

    async def step(self) -> bool:
        """One pruning step; True when there may be more to delete right away."""
        cutoff = self._clock() - self._retain_ns
        try:
            deleted = await self._flusher.between_flushes(
                lambda: self._backend.prune(cutoff, self._batch_rows)
            )
        except Exception:  # the task boundary: storage trouble must not stop the server
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                log.warning("retention: pruning failed (%d times)", self.failures, exc_info=True)
            return False
        self.steps += 1
        self.deleted += deleted
        return deleted >= self._batch_rows
