"""How often the host takes a core away from a process that wants it, and for how long.

A p99 over a one-second trial judges the host as much as the code: at 10,000 acks a
second, one stall of 5 ms in the server's loop makes 50 acks late, half of the 1% a p99
may leave out. ``measure_stalls`` keeps every core busy for a moment, before a scenario
starts: one spawned process per core spins on the monotonic clock and notes every gap
between two consecutive readings of it over ``GAP_FLOOR_NS`` (the spin itself reads the
clock every few hundred nanoseconds, so a gap is time the process was not running: the
kernel's own work, other processes, or the hypervisor running something else on that
core). On the 2-core VMs measured, with one core spinning there was no gap over 2 ms in
20 s; with both, one or two a second per core, up to 10 ms.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

STALL_SECONDS = 2.0
"""How long every core spins (the option ``--stall-seconds``; 0: not measured)."""
GAP_FLOOR_NS = 1_000_000
"""Gaps shorter than this are not noted (the scheduler's ordinary ticks)."""
THRESHOLDS_MS = (1, 2, 5, 10)
"""The gap lengths counted in the summary."""
_START_DELAY_NS = 500_000_000
"""Time for every process to spawn before they all start spinning together."""


def spin(start_ns: int, seconds: float) -> list[int]:
    """Wait until ``start_ns`` (``time.monotonic_ns``), spin for ``seconds`` and return
    the gaps over ``GAP_FLOOR_NS`` between consecutive clock readings, in ns."""
    now = time.monotonic_ns
    while now() < start_ns:
        time.sleep(0.001)
    gaps: list[int] = []
    last = now()
    end = last + int(seconds * 1e9)
    while last < end:
        reading = now()
        if reading - last > GAP_FLOOR_NS:
            gaps.append(reading - last)
        last = reading
    return gaps


@dataclass(frozen=True, slots=True)
class HostStalls:
    """The gaps seen while every core spun: counts per threshold, and the longest."""

    cores: int
    seconds: float
    over_ms: tuple[int, ...]
    """How many gaps were longer than each of ``THRESHOLDS_MS`` (all cores together)."""
    longest_ms: float

    @classmethod
    def from_gaps(cls, seconds: float, gaps_per_core: list[list[int]]) -> HostStalls:
        gaps = [gap for core in gaps_per_core for gap in core]
        return cls(
            cores=len(gaps_per_core),
            seconds=seconds,
            over_ms=tuple(sum(gap > ms * 1_000_000 for gap in gaps) for ms in THRESHOLDS_MS),
            longest_ms=max(gaps, default=0) / 1e6,
        )

    def per_core_second(self, threshold_ms: int) -> float:
        """Gaps longer than ``threshold_ms`` (one of ``THRESHOLDS_MS``) per second per core."""
        return self.over_ms[THRESHOLDS_MS.index(threshold_ms)] / (self.cores * self.seconds)

    def render(self) -> str:
        rates = " / ".join(f"{self.per_core_second(ms):.2g}" for ms in THRESHOLDS_MS)
        limits = " / ".join(str(ms) for ms in THRESHOLDS_MS)
        return (
            f"- host stalls with every core busy ({self.cores} processes spinning "
            f"{self.seconds:g} s before it started): a core was taken from a process for "
            f"over {limits} ms {rates} times a second per core, the longest "
            f"{self.longest_ms:.1f} ms"
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def measure_stalls(seconds: float = STALL_SECONDS, cores: int | None = None) -> HostStalls:
    """Spin one fresh process per core (``os.cpu_count()`` unless given) for ``seconds``,
    all at once, and summarize the gaps they saw."""
    count = cores or os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
        start_ns = time.monotonic_ns() + _START_DELAY_NS
        gaps = list(pool.map(spin, [start_ns] * count, [seconds] * count))
    return HostStalls.from_gaps(seconds, gaps)
