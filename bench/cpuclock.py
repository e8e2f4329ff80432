"""A helper process's CPU over a measurement window: all its threads, and its event
loop's thread alone (``publish.metrics.cpu``: why both).

``CpuClock`` is started and read on the loop's own thread (a helper answers its commands
there), so a report can tell a saturated loop from a process whose other threads (SQLite's
writer) use the machine's other core.
"""

from __future__ import annotations

from publish.metrics.cpu import CpuTimes, cpu_times


class CpuClock:
    """Started and read on the event loop's thread (``time.thread_time`` is the calling
    thread's)."""

    def __init__(self) -> None:
        self._start = cpu_times()

    def start(self) -> None:
        self._start = cpu_times()

    def used(self) -> CpuTimes:
        """CPU seconds since ``start`` (the loop's never more than the process's)."""
        return cpu_times().since(self._start)
