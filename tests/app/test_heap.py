"""``settle_heap``: startup's objects leave the collector's full passes, later garbage
does not. In a child process: a freeze is process-wide and must not leak into the
test run."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc, weakref
from app.heap import settle_heap

class Node:
    pass

startup = [Node() for _ in range(1000)]  # what a server builds before it is ready
assert gc.get_freeze_count() == 0
frozen = settle_heap()
assert frozen >= 1000, frozen
assert gc.get_freeze_count() == frozen

later = Node()
later.self = later  # a cycle made after the freeze: only a collection frees it
gone = weakref.ref(later)
del later
gc.collect()
assert gone() is None, "garbage made after the freeze was not collected"
print("ok", frozen)
"""


def test_settle_heap_freezes_what_exists_and_later_garbage_is_still_collected() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
