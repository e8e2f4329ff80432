"""Retention: BBO rows and feed events older than ``[storage].retain_bbo_hours`` are
deleted in small steps between the flusher's batches; positions are never deleted.

A step deletes at most ``batch_rows`` BBO rows and as many feed events, oldest first, in
one short transaction, and is built so that it cannot delay a flush:

- it starts only in a gap (``StorageFlusher.between_flushes``): no write in flight, and
  the next write due ``budget_ms`` later at least (or no row waiting, which puts the next
  write a whole window away);
- its size adapts to its measured duration so that a step takes between half the budget
  and the budget (``next_batch_rows``): a step over the budget shrinks the next one at
  once, fast full steps grow it. So a step on SQLite, which holds the one writer thread,
  ends before a write that fell due meanwhile needs the thread;
- steps are separate calls: after each, the gap is checked again, so a write that fell
  due during a step goes before the next step, never behind a run of them.

On PostgreSQL a step runs on a connection of its own (``prune_blocks_writes`` is false):
writes go on beside it and never wait for it at all. It still starts only while no write
is in flight (whenever the next one is due), which paces it, and its budget (half a
window) only sizes it.

Steps follow each other while there is old data (a backlog after a long stop drains step
by step in the gaps between batches, back to back while the server is idle) and pause
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
BUDGET_MS = 1.0
"""How long a step that holds up writes (SQLite) may take: it starts only when the next
flush is due at least this much later, and its size is tuned for steps of between half of
it and all of it. A step beside the writes (PostgreSQL) gets half a flush window."""
FIRST_BATCH_ROWS = 100
MIN_BATCH_ROWS = 10
MAX_BATCH_ROWS = 10_000

OnStep = Callable[[int, int], None]
"""Called after each step with its duration (ns) and the rows it deleted (benchmarks)."""


class Retention:
    """Run ``run()`` as a task beside the flusher's; see the module docstring.

    ``clock`` is the wall clock the retention is counted on (ns since the epoch);
    ``timer`` measures step durations (ns, monotonic). ``budget_ms`` defaults to
    ``BUDGET_MS`` where steps hold up writes (``backend.prune_blocks_writes``), to half
    the flusher's window where they do not, and is capped at half the window.
    """

    def __init__(
        self,
        flusher: StorageFlusher,
        backend: PrunableBackend,
        *,
        retain_hours: float,
        budget_ms: float | None = None,
        batch_rows: int = FIRST_BATCH_ROWS,
        min_batch_rows: int = MIN_BATCH_ROWS,
        max_batch_rows: int = MAX_BATCH_ROWS,
        idle_seconds: float = 1.0,
        clock: Callable[[], int] = time.time_ns,
        timer: Callable[[], int] = time.perf_counter_ns,
        on_step: OnStep | None = None,
    ) -> None:
        half_window = flusher.window_ms / 2
        if budget_ms is None:
            budget_ms = BUDGET_MS if backend.prune_blocks_writes else half_window
        if retain_hours <= 0 or budget_ms <= 0 or idle_seconds <= 0:
            raise ValueError("retain_hours, budget_ms and idle_seconds must be positive")
        if not 1 <= min_batch_rows <= batch_rows <= max_batch_rows:
            raise ValueError("need 1 <= min_batch_rows <= batch_rows <= max_batch_rows")
        self._flusher = flusher
        self._backend = backend
        self._retain_ns = int(retain_hours * HOUR_NS)
        self._budget_ns = int(min(budget_ms, half_window) * 1_000_000)
        self._min_rows = min_batch_rows
        self._max_rows = max_batch_rows
        self._idle = idle_seconds
        self._clock = clock
        self._timer = timer
        self._on_step = on_step
        self.batch_rows = batch_rows
        """The size of the next step."""
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
        rows = self.batch_rows
        blocks = self._backend.prune_blocks_writes
        try:
            deleted, took = await self._flusher.between_flushes(
                lambda: self._timed_prune(cutoff, rows),
                room=self._budget_ns / 1e9 if blocks else 0.0,
                exclusive=blocks,
            )
        except Exception:  # the task boundary: storage trouble must not stop the server
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                log.warning("retention: pruning failed (%d times)", self.failures, exc_info=True)
            return False
        self.steps += 1
        self.deleted += deleted
        self.batch_rows = next_batch_rows(
            rows, deleted, took, self._budget_ns, self._min_rows, self._max_rows
        )
        if self._on_step is not None:
            self._on_step(took, deleted)
        return deleted >= rows

    async def _timed_prune(self, cutoff: int, rows: int) -> tuple[int, int]:
        started = self._timer()
        deleted = await self._backend.prune(cutoff, rows)
        return deleted, self._timer() - started


def next_batch_rows(
    rows: int, deleted: int, took_ns: int, budget_ns: int, lowest: int, highest: int
) -> int:
    """The size of the step after one asked for ``rows`` that deleted ``deleted`` in
    ``took_ns``, kept within ``[lowest, highest]``: steps are aimed between half the
    budget and the budget.

    Over the budget it shrinks in proportion, to take half the budget (at most 4 times
    per step: one slow step is often a stall, not the size). Under half the budget, after
    a full step, it grows in proportion, by a quarter at least (a step's fixed cost, the
    transaction and the hand-over to the writer, does not grow with it) and twice at
    most. In between, or after a step that found fewer rows than asked (which says
    nothing about a larger one), the size stays."""
    aim = budget_ns // 2
    if took_ns > budget_ns:
        wanted = max(rows * aim // took_ns, rows // 4)
    elif took_ns < aim and deleted >= rows:
        wanted = min(max(rows * aim // max(took_ns, 1), rows * 5 // 4), rows * 2)
    else:
        wanted = rows
    return max(lowest, min(highest, wanted))
