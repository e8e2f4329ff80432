"""What every scenario prints: machine conditions, tables of figures beside their floor,
ratios, targets met or missed, and progress on stderr while it runs.

The report is Markdown so it pastes into ``docs/performance.md`` as it is; progress
goes to stderr so that stdout holds nothing else.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from hdrh.histogram import HdrHistogram

from bench.hostspeed import HostSpeed
from bench.hoststalls import HostStalls, measure_stalls

REPO = Path(__file__).resolve().parent.parent

LATENCY_MAX_NS = 60_000_000_000
"""Largest latency an HDR histogram of the bench records (60 s), 3 significant digits."""


def latency_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_NS, 3)


@dataclass(frozen=True, slots=True)
class Machine:
    """The conditions a run was measured under, printed at the top of every report."""

    cpu: str
    cores: int
    python: str
    uvloop: bool
    load_average: tuple[float, float, float]
    system: str
    started: str
    commit: str

    @classmethod
    def current(cls) -> Machine:
        return cls(
            cpu=_cpu_model(),
            cores=os.cpu_count() or 1,
            python=f"{platform.python_implementation()} {platform.python_version()}",
            uvloop=_has_uvloop(),
            load_average=os.getloadavg(),
            system=f"{platform.system()} {platform.release()}",
            started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            commit=_git_commit(),
        )

    def render(self) -> str:
        return (
            f"- machine: {self.cpu}, {self.cores} cores, {self.system}\n"
            f"- Python: {self.python}; uvloop: {'yes' if self.uvloop else 'no'}\n"
            f"{load_line(self.load_average)}\n"
            f"- run: {self.started}, commit {self.commit}"
        )


def load_line(load_average: tuple[float, ...]) -> str:
    """The report line of the load average at a start (1, 5 and 15 minutes)."""
    return "- load average at start (1/5/15 min): " + " ".join(
        f"{value:.2f}" for value in load_average
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _has_uvloop() -> bool:
    from app.loop import loop_factory

    return loop_factory() is not None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


@dataclass(frozen=True, slots=True)
class ScenarioConditions:
    """The conditions one scenario started under, measured in its own process just
    before it ran: each scenario runs in a fresh one (``bench/scenarioprocess.py``)."""

    pid: int
    load_average: tuple[float, float, float]
    rss_bytes: int
    parent_rss_bytes: int
    """The bench's main process, which only waits while the scenario runs."""
    stalls: HostStalls | None = None
    """The host's stalls with every core busy, just before (``None``: not measured)."""

    @classmethod
    def current(cls, stall_seconds: float = 0.0) -> ScenarioConditions:
        """Read now; with ``stall_seconds`` > 0, every core first spins that long
        (``bench.hoststalls``)."""
        stalls = measure_stalls(stall_seconds) if stall_seconds > 0 else None
        return cls(
            pid=os.getpid(),
            load_average=os.getloadavg(),
            rss_bytes=rss_bytes(),
            parent_rss_bytes=rss_bytes(os.getppid()),
            stalls=stalls,
        )

    def render(self) -> str:
        lines = [
            load_line(self.load_average),
            f"- scenario process: pid {self.pid}, {megabytes(self.rss_bytes)} MB RSS at start "
            f"(the bench's main process: {megabytes(self.parent_rss_bytes)} MB)",
        ]
        if self.stalls is not None:
            lines.append(self.stalls.render())
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "load_average": list(self.load_average),
            "rss_bytes": self.rss_bytes,
            "parent_rss_bytes": self.parent_rss_bytes,
            "stalls": None if self.stalls is None else self.stalls.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Table:
    """One Markdown table: a header row and rows of already formatted cells."""

    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]

    def render(self) -> str:
        widths = [
            max(3, len(column), *(len(row[i]) for row in self.rows))
            for i, column in enumerate(self.columns)
        ]

        def line(cells: Sequence[str]) -> str:
            return (
                "| "
                + " | ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True))
                + " |"
            )

        out = [f"**{self.title}**", "", line(self.columns)]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out += [line(row) for row in self.rows]
        return "\n".join(out)


@dataclass(frozen=True, slots=True)
class Target:
    """A target from the issues: met when ``measured`` is on the right side of ``required``."""

    what: str
    measured: float
    required: float
    unit: str
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.required
        return self.measured <= self.required

    def render(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        verdict = "met" if self.met else "MISSED"
        return (
            f"- {verdict}: {self.what}: {number(self.measured)}{self.unit} "
            f"(target {sign} {number(self.required)}{self.unit})"
        )


@dataclass(slots=True)
class ScenarioResult:
    """Everything one scenario measured; ``figures`` are its headline numbers by name
    (machine-readable, in the JSON output). ``conditions`` are set by the process that
    ran it, and printed under the title."""

    key: str
    title: str
    how: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    conditions: ScenarioConditions | None = None
    host: HostSpeed | None = None
    """How fast the host ran while it was measured, set by the bench's main process."""

    def render(self) -> str:
        out = [f"## {self.title}", ""]
        header = [part.render() for part in (self.conditions, self.host) if part is not None]
        if header:
            out += [*header, ""]
        out += [self.how, ""]
        for table in self.tables:
            out += [table.render(), ""]
        if self.targets:
            out += ["Targets:", "", *(target.render() for target in self.targets), ""]
        if self.notes:
            out += [*(f"- {note}" for note in self.notes), ""]
        return "\n".join(out)

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "title": self.title,
            "conditions": None if self.conditions is None else self.conditions.to_json(),
            "host": None if self.host is None else self.host.to_json(),
            "figures": self.figures,
            "targets": [
                {
                    "what": t.what,
                    "measured": t.measured,
                    "required": t.required,
                    "unit": t.unit.strip(),
                    "met": t.met,
                }
                for t in self.targets
            ],
        }


def number(value: float) -> str:
    """``1234567.8`` -> ``1,234,568``; small values keep significant digits."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio(ours: float, floor: float) -> str:
    """``ours / floor`` as a percentage (or ``x`` multiple when far above)."""
    if floor <= 0:
        return "-"
    value = ours / floor
    return f"{value:.1f}x" if value >= 2 else f"{value * 100:.0f}%"


def ms(ns: float) -> str:
    """Nanoseconds as milliseconds with three significant digits (``1,234`` from 1 s up,
    never an exponent)."""
    value = ns / 1e6
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def megabytes(n_bytes: float) -> str:
    return f"{n_bytes / (1 << 20):.1f}"


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from ``/proc``."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


class Progress:
    """Progress lines on stderr, stamped with the seconds since the bench started:
    rewritten in place on a terminal, one per step otherwise.

    ``update`` is rate-limited (4 per second) so tight loops may call it freely.
    ``started`` (``time.monotonic()``, one clock for every process of the machine) is
    when the bench started, for a scenario running in a process of its own.
    """

    def __init__(self, stream: TextIO | None = None, *, started: float | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._scenario = ""
        self.started = time.monotonic() if started is None else started
        self._last = 0.0
        self._open = False

    def scenario(self, name: str) -> None:
        self._scenario = name

    def step(self, message: str) -> None:
        """A new stage of the current scenario (always shown)."""
        self._write(message)
        self._last = time.monotonic()

    def update(self, message: str) -> None:
        """A progress figure inside a stage (shown at most 4 times a second)."""
        now = time.monotonic()
        if now - self._last >= 0.25:
            self._last = now
            self._write(message)

    def done(self) -> None:
        if self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False

    def _write(self, message: str) -> None:
        text = f"[{self._scenario} {time.monotonic() - self.started:6.1f}s] {message}"
        if self._tty:
            self._stream.write("\r\x1b[2K" + text)
            self._open = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
