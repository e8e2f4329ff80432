"""A helper process's CPU over a measurement window: all its threads, and its event
loop's thread alone (``publish.metrics.cpu``: why both).

``CpuClock`` is started and read on the loop's own thread (a helper answers its commands
there), so a report can tell a saturated loop from a process whose other threads (SQLite's
writer) use the machine's other core.
"""

from __future__ import annotations

import time

from publish.metrics.cpu import CpuTimes


class CpuClock:
    """Started and read on the event loop's thread (``time.thread_time`` is the calling
    thread's)."""

    def __init__(self) -> None:
        self._process = time.process_time()
        self._loop = time.thread_time()

    def start(self) -> None:
        self._process = time.process_time()
        self._loop = time.thread_time()

    def used(self) -> CpuTimes:
        """CPU seconds since ``start``. The thread's window lies within the process's (read
        after it at the start, before it at the end), so ``event_loop <= process``."""
        loop = time.thread_time() - self._loop
        return CpuTimes(time.process_time() - self._process, loop)
