"""Keep the garbage collector's full passes short in a long-running process.

CPython's collector runs a full pass (generation 2) now and then, and a full pass walks
every tracked object in the process, holding the event loop for its whole length. A
started server holds ~50,000 of them before it serves anything (modules, classes,
settings, the positions it loaded), so on the 2-core EPYC VM of the benchmarks a full
pass held the loop for tens of milliseconds: in the order-entry server on PostgreSQL at
1,000 opens/s, loop stalls of 16-71 ms, flushes of 60-78 ms and p99 acks of 20-35 ms
in every 6 s run; with the heap settled, the longest stall was 1 ms, the longest flush
12 ms and the p99 8.6 ms.
``settle_heap``, called once the server is ready, collects once and then freezes what
exists (``gc.freeze``): those objects move to a permanent generation that later passes
skip, so a full pass walks only what the server created since it started.

Frozen objects are never collected, even once unreachable: call it once per process,
when the startup's garbage is gone (the collection before the freeze takes it), never
in a loop.
"""

from __future__ import annotations

import gc


def settle_heap() -> int:
    """Collect, then freeze every object that survives; how many are frozen now. One
    full collection (tens of ms at start on the benchmark VM)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
