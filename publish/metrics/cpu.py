"""CPU time of the process, and of the thread that runs its event loop.

A server's event loop is one thread: every connection, every feed and every request is
served there. Beside it run SQLite's writer and checkpoint threads (and a library's
threads), on the machine's other cores. So the process can use more than one core while
the loop still has time to spare, and the process's CPU alone does not say whether the
loop is the limit. The loop's share of a core does: near 100% the loop is saturated and
everything it serves queues; well below, a latency that grows comes from elsewhere (a
commit, a hand-off between threads, the machine's other work).

``cpu_times`` reads both; it must be called on the event loop's thread
(``time.thread_time`` is the calling thread's), as the metrics tick is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU seconds: since the process (and its loop's thread) started, or over a window
    when one ``CpuTimes`` is taken from another."""

    process: float
    """Every thread of the process."""
    event_loop: float
    """The thread that runs the event loop."""

    def since(self, earlier: CpuTimes) -> CpuTimes:
        """The CPU seconds used from ``earlier`` to these. The loop's are never more than
        the process's: each reading takes the two clocks one after the other, so a
        window's two ends can differ by what ran in between."""
        process = self.process - earlier.process
        return CpuTimes(process, min(self.event_loop - earlier.event_loop, process))

    def shares(self, seconds: float) -> CpuTimes:
        """These CPU seconds as shares of one core over ``seconds`` of wall time."""
        return CpuTimes(self.process / seconds, self.event_loop / seconds)


def cpu_times() -> CpuTimes:
    """The process's and the calling thread's CPU seconds so far (call it on the loop)."""
    return CpuTimes(time.process_time(), time.thread_time())
