"""A helper process's CPU over a measurement window: all its threads, and its event
loop's thread alone.

A server's process time counts every thread: marketcast's SQLite writer and checkpoint
threads, and threads of the libraries it uses, beside its event loop. On a machine with
more than one core the process can use more than a core while its loop, the one thread
that serves every connection, still has time to spare; so "the process at 106% of a
core" does not say the loop is the limit. ``CpuClock`` reads both, on the loop's own
thread (a helper answers its commands there), so a report can tell them apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds used over a window."""

    process: float
    """By every thread of the process."""
    loop: float
    """By the thread that runs its event loop."""


class CpuClock:
    """Started and read on the event loop's thread (``time.thread_time`` is the calling
    thread's)."""

    def __init__(self) -> None:
        self._process = time.process_time()
        self._loop = time.thread_time()

    def start(self) -> None:
        self._process = time.process_time()
        self._loop = time.thread_time()

    def used(self) -> CpuUse:
        """CPU seconds since ``start``. The thread's window lies within the process's (read
        after it at the start, before it at the end), so ``loop <= process``."""
        loop = time.thread_time() - self._loop
        return CpuUse(time.process_time() - self._process, loop)
