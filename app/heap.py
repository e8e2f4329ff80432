"""Keep the garbage collector's passes short in a long-running server.

CPython's collector runs a full pass (generation 2) each time the objects that survived
its young passes grow by a quarter of the old ones, and a full pass walks every tracked
object in the process, holding the event loop for its whole length. A server's heap
only grows while it runs: startup's ~50,000 objects (modules, classes, settings), then
every connection, and every open position (its ``Position`` is kept out of the
collector's sight, ``publish.untracked``, and the position book adds no tracked object
around it). On the 2-core EPYC VM of the benchmarks a full pass costs ~0.5 us per
object: in the order-entry server at 2,500 opens/s the passes held the loop 47 ms at
100,000 objects and 72 ms at 145,000, every few seconds, and every request arriving
meanwhile waited (p99 ack 44-63 ms against 4.5 ms p50).

``HeapKeeper`` keeps each pass to what is new:

- once the server is ready it collects once and freezes what survives (``gc.freeze``):
  those objects move to a permanent generation that passes skip;
- after every full pass the collector makes from then on, it freezes the survivors too,
  so the next full pass walks only what was made since the last one; and it lowers the
  full pass's threshold to ``FULL_PASS_THRESHOLD`` young passes so that a full pass
  never has much to walk (at most two young passes' survivors);
- frozen objects are never collected, even once unreachable (a connection's objects
  that lived long enough to be frozen and form a cycle when it closes). So when the
  heap has grown to ``RECLAIM_GROWTH`` times its size at the last reclaim, everything is
  unfrozen, collected and frozen again (``reclaim``): one pass over the whole heap, as
  CPython's own policy makes each time the heap grows by a quarter. Memory held by
  unreachable frozen objects is thus bounded by the live heap, and the long passes come
  once per doubling instead of once per quarter.

The heap has grown when both of its sizes have: the objects the collector tracks (what
a pass walks, and what can be cyclic garbage) and the memory they and their untracked
contents take. Either alone is wrong for a trading server. An open position is several
small-object blocks and no tracked object, so memory alone doubles first and would call
a pass that frees nothing (in the order-entry server at about 25,000 positions, 60-100
ms, when a position was still 1 tracked object). Tracked objects are counted as they are
frozen, cheaply but without subtracting those that die by reference counting afterwards
(the objects of a connection that closed), so under steady churn that count alone keeps
rising while nothing leaks. Frozen cyclic garbage grows both.

- The memory is ``sys.getallocatedblocks()``: the interpreter's small-object blocks in
  use, a walk of its arenas (0.2 ms at 5 million blocks on that VM).
- The tracked objects are counted exactly at a settle (``gc.get_freeze_count()``, a walk
  of every frozen object: 25 ms at 2 million on CPython 3.11, so not at every look), and
  then summed as each full pass's survivors are frozen (``gc.get_objects()`` then holds
  just them: a list as long as the pass that made it walked). That sum only ever
  overstates, so when it and the memory both say a reclaim is due, the exact count
  confirms first (one walk of the frozen list: 0.4 ms at 85,000 objects on the
  benchmark VM, against a reclaim's 38 ms at 77,000 in the server) and, if
  the objects have not really doubled, replaces the sum (and the next walk then waits
  until a quarter of the settled heap more has been frozen). Without that, churn (objects
  that survive a pass, then die) and memory that grows without tracked objects (open
  positions, ``publish.untracked``) together called reclaims that freed nothing: in the
  order-entry server, 38 ms at 77,000 frozen objects.

Everything here is process-wide; ``start`` once per process, once its startup garbage is
gone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

FULL_PASS_THRESHOLD = 1
"""Young (generation 1) passes between two full passes, above CPython's 10: with the
survivors of each full pass frozen, a full pass walks what the last two young passes
kept (at most ~14,000 objects with the default thresholds), a few ms."""
RECLAIM_GROWTH = 2.0
"""Reclaim when the heap (its allocated blocks and its frozen objects) reaches this
multiple of its size after the last reclaim (or the first settle)."""
WALK_SPACING = 0.25
"""After an exact count that found no reclaim due, the running sum of frozen objects
must grow by this share of the objects frozen at the last settle before the next exact
count. However close to its mark the heap stays, there is then at most one walk (~12 ns
per frozen object) per quarter of the settled heap frozen by full passes since."""
RECLAIM_CHECK_SECONDS = 1.0
"""How often ``run`` looks at the heap's size (one ``sys.getallocatedblocks()``)."""


@dataclass(slots=True)
class HeapCounts:
    """What the keeper has done since ``start``."""

    full_passes: int = 0
    """The collector's own full passes whose survivors were frozen."""
    reclaims: int = 0
    reclaimed: int = 0
    """Unreachable frozen objects the reclaims collected."""
    last_reclaim_ms: float = 0.0
    settled_frozen: int = 0
    """Objects frozen by the last settle (``start`` or the last reclaim)."""
    frozen: int = 0
    """``settled_frozen`` plus every full pass's survivors frozen since (or the exact count
    of the last walk plus those since): an upper bound of the frozen objects (those freed
    since by reference counting are still in it)."""
    frozen_walks: int = 0
    """Exact counts of the frozen objects taken because ``frozen`` and the blocks said a
    reclaim was due (each a walk of the frozen objects)."""
    walk_at_frozen: int = 0
    """The frozen objects (``frozen``) from which the next exact count is taken: the
    reclaim's mark, or past it after an exact count that found no reclaim due
    (``WALK_SPACING``)."""
    settled_blocks: int = 0
    """The heap's allocated blocks after the last settle."""
    reclaim_at_blocks: int = 0
    """The allocated blocks from which the next reclaim is due."""
    reclaim_at_frozen: int = 0
    """The frozen objects (``frozen``) from which the next reclaim is due."""


class HeapKeeper:
    """See the module docstring. ``start`` settles the heap and watches the collector;
    ``run`` (a task on the server's loop) reclaims when due; ``stop`` restores CPython's
    own policy (the frozen objects stay frozen)."""

    def __init__(self, *, growth: float = RECLAIM_GROWTH) -> None:
        if growth <= 1.0:
            raise ValueError("growth must be above 1")
        self._growth = growth
        self._thresholds: tuple[int, int, int] | None = None
        self._counts = HeapCounts()
        self._busy = False
        """The keeper's own collection is running (its callback leaves it alone)."""

    @property
    def counts(self) -> HeapCounts:
        """What the keeper has done, and the heap's size at its last settle."""
        return self._counts

    def reclaim_due(self) -> bool:
        """Both the frozen objects and the allocated blocks have grown to their mark. The
        objects' running sum (an upper bound) is checked first, without a walk; only when
        it and the blocks say due does an exact count (a walk) confirm, and replace it."""
        counts = self._counts
        if (
            self._thresholds is None
            or counts.frozen < counts.walk_at_frozen
            or sys.getallocatedblocks() < counts.reclaim_at_blocks
        ):
            return False
        counts.frozen = gc.get_freeze_count()
        counts.frozen_walks += 1
        if counts.frozen >= counts.reclaim_at_frozen:
            return True
        # Not due: the next walk waits until a share of the heap has been frozen since,
        # so a heap that stays just under its mark is not walked at every look.
        spacing = int(counts.settled_frozen * WALK_SPACING)
        counts.walk_at_frozen = max(counts.reclaim_at_frozen, counts.frozen + spacing)
        return False

    def start(self) -> int:
        """Collect, freeze what survives and watch the full passes from now on; how many
        objects are frozen. One full collection (tens of ms on the benchmark VM)."""
        if self._thresholds is not None:
            raise RuntimeError("the heap keeper is already started")
        self._settle()
        young, middle, _ = gc.get_threshold()
        self._thresholds = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_PASS_THRESHOLD)
        gc.callbacks.append(self._on_collection)
        return self._counts.settled_frozen

    def stop(self) -> None:
        if self._thresholds is None:
            return
        gc.callbacks.remove(self._on_collection)
        gc.set_threshold(*self._thresholds)
        self._thresholds = None

    def reclaim(self) -> int:
        """Unfreeze, collect and freeze again: one full pass over the whole heap, which
        frees what became unreachable while frozen; how many objects it collected."""
        started = time.perf_counter()
        gc.unfreeze()
        collected = self._settle()
        self._counts.reclaims += 1
        self._counts.reclaimed += collected
        self._counts.last_reclaim_ms = (time.perf_counter() - started) * 1e3
        logger.info(
            "heap reclaimed: %d unreachable objects collected, %d frozen, %.1f ms",
            collected,
            self._counts.settled_frozen,
            self._counts.last_reclaim_ms,
        )
        return collected

    async def run(self) -> None:
        """Reclaim whenever it is due; until cancelled."""
        while True:
            await asyncio.sleep(RECLAIM_CHECK_SECONDS)
            if self.reclaim_due():
                self.reclaim()

    def _settle(self) -> int:
        self._busy = True
        try:
            collected = gc.collect()
            gc.freeze()
        finally:
            self._busy = False
        counts = self._counts
        counts.settled_frozen = gc.get_freeze_count()  # a walk, but so was the collect
        counts.frozen = counts.settled_frozen
        counts.reclaim_at_frozen = max(int(counts.settled_frozen * self._growth), 1)
        counts.walk_at_frozen = counts.reclaim_at_frozen
        counts.settled_blocks = sys.getallocatedblocks()
        counts.reclaim_at_blocks = max(int(counts.settled_blocks * self._growth), 1)
        return collected

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        # The collector's own full pass is over: what is left is reachable, or garbage
        # the collector cannot free; either way the next full pass need not walk it.
        if phase == "stop" and info["generation"] == 2 and not self._busy:
            survivors = len(gc.get_objects())  # the generations hold just them now
            gc.freeze()
            self._counts.frozen += survivors
            self._counts.full_passes += 1
