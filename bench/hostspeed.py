"""How fast the host ran while a scenario was measured.

On a shared VM the same code and load can take twice the CPU from one minute to the
next (other tenants' use of the caches and memory bus, not steal): a figure that misses
its target may say more about the host than about the code. ``HostSpeedProbe`` runs in
the bench's main process, which only waits while a scenario's process works. Every
``PROBE_INTERVAL`` seconds it runs the same fixed pure-Python work (``probe_work``) and
measures the CPU time it took (``time.thread_time_ns``: time it waited for a core is not
counted, so a busy machine does not inflate it, a slow one does). The spread of those
times over a scenario, and their level against another run's, show the host's speed.
On Linux it also reads the CPU time the hypervisor took from the machine (steal).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

PROBE_INTERVAL = 0.25
"""Seconds between two probes: about 0.2% of a core on the machines measured."""
PROBE_ROUNDS = 2_000
"""Rounds of ``probe_work``: a few hundred microseconds of CPU on those machines."""


def probe_work(rounds: int = PROBE_ROUNDS) -> int:
    """Fixed work in the interpreter (arithmetic, a dict, a list); returns a checksum so
    that nothing of it can be skipped."""
    table: dict[int, int] = {}
    items: list[int] = []
    total = 0
    for i in range(rounds):
        table[i & 255] = table.get(i & 255, 0) + i
        items.append(i * 7 % 13)
        total += i % 7
    return total + sum(items) + len(table)


@dataclass(frozen=True, slots=True)
class HostSpeed:
    """The probes of one scenario: CPU µs each took, and the machine's steal share."""

    probes: int
    fastest_us: float
    p50_us: float
    p90_us: float
    slowest_us: float
    steal_share: float | None
    """Share of the machine's CPU time the hypervisor took (``None``: not known)."""

    @property
    def slowdown(self) -> float:
        """The slowest probe against the fastest: 1.0 on a steady host."""
        return self.slowest_us / self.fastest_us

    def render(self) -> str:
        steal = "" if self.steal_share is None else f"; CPU steal {self.steal_share:.1%}"
        return (
            f"- host speed while it ran: the same pure-Python probe ({self.probes} runs, "
            f"one per {PROBE_INTERVAL:g} s in the bench's main process) took "
            f"{self.fastest_us:.0f} / {self.p50_us:.0f} / {self.p90_us:.0f} / "
            f"{self.slowest_us:.0f} µs of CPU (fastest / p50 / p90 / slowest): up to "
            f"{self.slowdown:.2f}x its fastest{steal}"
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class HostSpeedProbe:
    """A thread that probes the host's speed from ``__enter__`` to ``__exit__``;
    ``result()`` summarizes what it measured (``None`` without a probe)."""

    def __init__(self, interval: float = PROBE_INTERVAL, rounds: int = PROBE_ROUNDS) -> None:
        self._interval = interval
        self._rounds = rounds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-speed-probe", daemon=True)
        self._samples_ns: list[int] = []
        self._steal_before: tuple[int, int] | None = None
        self._steal_after: tuple[int, int] | None = None

    def __enter__(self) -> HostSpeedProbe:
        self._steal_before = cpu_times()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._steal_after = cpu_times()

    def result(self) -> HostSpeed | None:
        samples = sorted(self._samples_ns)
        if not samples:
            return None
        micros = [sample / 1000 for sample in samples]
        return HostSpeed(
            probes=len(micros),
            fastest_us=micros[0],
            p50_us=_quantile(micros, 0.5),
            p90_us=_quantile(micros, 0.9),
            slowest_us=micros[-1],
            steal_share=steal_share(self._steal_before, self._steal_after),
        )

    def _run(self) -> None:
        while True:
            started = time.thread_time_ns()
            probe_work(self._rounds)
            self._samples_ns.append(max(1, time.thread_time_ns() - started))
            if self._stop.wait(self._interval):
                return


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """``(steal, total)`` CPU ticks of the whole machine so far (``None`` where the
    kernel does not say: not Linux, or a kernel without a steal column)."""
    try:
        fields = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    return ticks[7], sum(ticks[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU ticks between two ``cpu_times`` that were stolen."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
