"""Where a process's versions (``seq``) start, so that they only grow across restarts.

Every book's and every consolidated quote's ``seq`` starts at ``seq_base()``: the start
time in microseconds since the epoch. A restarted process continues above its previous
run unless one key changed more than a million times a second on average; the values
stay below 2**53, exact in JavaScript, until the year 2255.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def seq_base(clock: Callable[[], int] = time.time_ns) -> int:
    return clock() // 1000
