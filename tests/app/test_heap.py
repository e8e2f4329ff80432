"""``HeapKeeper``: startup's objects and every full pass's survivors leave the later
passes; garbage made meanwhile is still collected, and garbage that was frozen is freed
by a reclaim. In a child process: a freeze is process-wide and must not leak into the
test run."""

from __future__ import annotations

import subprocess
import sys

import pytest

PRELUDE = """
import asyncio, gc, sys, weakref
import app.heap
from app.heap import FULL_PASS_THRESHOLD, HeapKeeper

class Node:
    pass

def cycle():
    node = Node()
    node.self = node
    return node

def churn(settled):
    # Objects that survive a full pass (so are frozen), then die by reference counting:
    # eight batches of a quarter of the settled heap each.
    for _ in range(8):
        batch = [Node() for _ in range(settled // 4)]
        gc.collect()
        del batch
"""

STARTUP_AND_LATER_GARBAGE = """
startup = [Node() for _ in range(1000)]  # what a server builds before it is ready
assert gc.get_freeze_count() == 0
before = gc.get_threshold()
keeper = HeapKeeper()
frozen = keeper.start()
assert frozen >= 1000, frozen
assert gc.get_freeze_count() == frozen
assert gc.get_threshold() == (before[0], before[1], FULL_PASS_THRESHOLD)

later = cycle()  # made after the start: the next pass frees it
gone = weakref.ref(later)
del later
gc.collect()
assert gone() is None, "garbage made after the start was not collected"

keeper.stop()
assert gc.get_threshold() == before
print("ok")
"""

FULL_PASS_SURVIVORS = """
keeper = HeapKeeper()
keeper.start()
frozen = gc.get_freeze_count()
kept = [Node() for _ in range(5000)]  # what the server holds from now on (positions)
assert gc.get_freeze_count() == frozen
# The collector's own full pass: a burst of survivors triggers it by itself.
while keeper.counts.full_passes == 0:
    kept.extend(Node() for _ in range(1000))
assert gc.get_freeze_count() >= frozen + 5000, (gc.get_freeze_count(), frozen)
assert not gc.get_objects(generation=2), "the survivors of a full pass are not frozen"
# The keeper's count of them, without a walk: exact while none has died.
assert abs(keeper.counts.frozen - gc.get_freeze_count()) < 100, (
    keeper.counts.frozen, gc.get_freeze_count())
print("ok")
"""

RECLAIM = """
keeper = HeapKeeper(growth=1.5)
keeper.start()
held = cycle()  # reachable through a pass, so frozen; then dropped
gc.collect()
gone = weakref.ref(held)
del held
gc.collect()
assert gone() is not None, "a frozen object was collected without a reclaim"

walks = []
freeze_count = gc.get_freeze_count
gc.get_freeze_count = lambda: walks.append(1) or freeze_count()
assert not keeper.reclaim_due()
assert not walks, "looking at the heap's size walked the frozen generation"
assert keeper.counts.frozen_walks == 0
gc.get_freeze_count = freeze_count
kept = [Node() for _ in range(sys.getallocatedblocks())]
gc.collect()  # a full pass: kept is frozen, the heap has doubled
assert keeper.reclaim_due()
assert keeper.counts.frozen_walks == 1  # the exact count confirmed it

app.heap.RECLAIM_CHECK_SECONDS = 0.01

async def reclaim_in_the_background():
    task = asyncio.get_running_loop().create_task(keeper.run())
    while keeper.counts.reclaims == 0:
        await asyncio.sleep(0.01)
    task.cancel()

asyncio.run(reclaim_in_the_background())
assert gone() is None, "the reclaim did not free the frozen garbage"
counts = keeper.counts
assert counts.reclaims == 1 and counts.reclaimed >= 1, counts
assert not keeper.reclaim_due()
assert gc.get_freeze_count() >= len(kept)
print("ok")
"""

MEMORY_ALONE = """
keeper = HeapKeeper()
keeper.start()
# What an open position mostly is: memory the collector does not track (its strings and
# ints), held by few tracked objects. The heap's memory doubles, its objects do not.
kept = [str(index) * 4 for index in range(sys.getallocatedblocks())]
gc.collect()
assert sys.getallocatedblocks() >= keeper.counts.reclaim_at_blocks
assert keeper.counts.frozen < keeper.counts.reclaim_at_frozen, keeper.counts
assert not keeper.reclaim_due(), "memory alone called a pass that can free nothing"
print("ok")
"""

STARTED = """
keeper = HeapKeeper()
keeper.start()
settled = keeper.counts.settled_frozen
"""
"""A keeper started, and the frozen count it settled at: how the churn scripts begin."""

CHURN = """
# Objects that survive a full pass (so are frozen) and then die by reference counting, as
# the objects of connections that come and go: the frozen count rises past its mark, the
# memory does not.
blocks = sys.getallocatedblocks()
churn(settled)
assert keeper.counts.frozen >= keeper.counts.reclaim_at_frozen, keeper.counts
assert sys.getallocatedblocks() < keeper.counts.reclaim_at_blocks, (
    sys.getallocatedblocks(), blocks, keeper.counts)
assert not keeper.reclaim_due(), "churn with nothing leaked called a reclaim"
print("ok")
"""

CHURN_AND_MEMORY = """
# Churn (objects frozen by a full pass, then dead: the sum of frozen objects passes its
# mark) and memory that grows without tracked objects (open positions): both marks are
# reached, but the frozen objects have not doubled, and a reclaim would free nothing.
churn(settled)
kept = [str(index) * 4 for index in range(sys.getallocatedblocks())]
assert keeper.counts.frozen >= keeper.counts.reclaim_at_frozen, keeper.counts
assert sys.getallocatedblocks() >= keeper.counts.reclaim_at_blocks
assert not keeper.reclaim_due(), "a reclaim was due on the overstated sum of frozen objects"
assert keeper.counts.frozen_walks == 1
assert keeper.counts.frozen == gc.get_freeze_count() < keeper.counts.reclaim_at_frozen
assert not keeper.reclaim_due()  # the sum is exact again: no second walk
assert keeper.counts.frozen_walks == 1
print("ok")
"""

WALKS_SPACED = """
# The heap stays just under its mark: real objects take the frozen count to 95% of it,
# the memory is past its own, and churn pushes the sum over the mark again and again.
held = [Node() for _ in range(int(settled * 0.9))]
gc.collect()
kept = [str(index) * 4 for index in range(sys.getallocatedblocks())]
churn(settled)
assert not keeper.reclaim_due()
assert keeper.counts.frozen_walks == 1
exact = keeper.counts.frozen
assert exact < keeper.counts.reclaim_at_frozen < keeper.counts.walk_at_frozen
assert keeper.counts.walk_at_frozen == exact + int(settled * app.heap.WALK_SPACING)
# A little churn takes the sum past the mark, not past the next walk's: no walk.
batch = [Node() for _ in range(int(settled * 0.15))]
gc.collect()
del batch
assert keeper.counts.frozen >= keeper.counts.reclaim_at_frozen, keeper.counts
assert not keeper.reclaim_due()
assert keeper.counts.frozen_walks == 1, "walked again before a quarter of the heap was frozen"
# Real growth past the mark is found at the next walk, once the sum reaches it.
held += [Node() for _ in range(int(settled * 0.3))]
gc.collect()
assert keeper.counts.frozen >= keeper.counts.walk_at_frozen, keeper.counts
assert keeper.reclaim_due()
assert keeper.counts.frozen_walks == 2
print("ok")
"""


@pytest.mark.parametrize(
    "script",
    [
        STARTUP_AND_LATER_GARBAGE,
        FULL_PASS_SURVIVORS,
        RECLAIM,
        MEMORY_ALONE,
        STARTED + CHURN,
        STARTED + CHURN_AND_MEMORY,
        STARTED + WALKS_SPACED,
    ],
    ids=[
        "startup-and-later-garbage",
        "full-pass-survivors",
        "reclaim",
        "memory-alone",
        "churn",
        "churn-and-memory",
        "walks-spaced",
    ],
)
def test_heap_keeper(script: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_heap_keeper_refuses_a_growth_that_never_bounds_the_heap() -> None:
    from app.heap import HeapKeeper

    with pytest.raises(ValueError, match="growth"):
        HeapKeeper(growth=1.0)
