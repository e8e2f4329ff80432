"""Ramps of repeated, interleaved steps, judged by their median: a headline that one
hiccup of a shared machine cannot flip.

A contender (a server under test, or its floor) is offered a rate for one measured
window: a *trial*. ``climb`` runs every step of a ramp ``repeats`` times, interleaving
the contenders still climbing (A B, then B A, ...: neither always goes first), and
keeps the trials of each step together as a ``RepeatedStep``. A step is **sustained**
when, by the median of its trials, the driver really offered at least ``share`` of the
step's rate, at least ``share`` of what it offered was delivered, the p99 latency was
within the step's limit, and nothing failed (clients closed, errors). A contender stops
climbing after its first step not sustained; the ramp stops when no contender climbs.
The headline is each contender's highest sustained step, side by side; ``spread`` tells
how far the trials of a step were apart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from hdrh.histogram import HdrHistogram

from bench.report import ms, number


class Trial(Protocol):
    """One measured window of one contender at one offered rate."""

    @property
    def offered(self) -> float:
        """Load offered per second (what the driver really offered)."""
        ...

    @property
    def delivered(self) -> float:
        """Load delivered (or acknowledged) per second."""
        ...

    @property
    def p99_ns(self) -> float:
        """p99 latency of the window, ns (``math.inf`` when nothing was measured)."""
        ...

    @property
    def failures(self) -> int:
        """Clients closed or requests refused during the window."""
        ...


T = TypeVar("T", bound=Trial)
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Criteria:
    """What a sustained step is."""

    share: float
    """Least share of the offered load delivered (0.95)."""
    p99_limit_ms: float
    """Largest p99 latency of the step."""


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


@dataclass(slots=True)
class RepeatedStep(Generic[T]):
    """The trials of one contender at one step of the ramp."""

    rate: float
    """The step's nominal offered rate (what the ramp asked for)."""
    trials: list[T] = field(default_factory=list)

    @property
    def offered(self) -> float:
        return self.median_of(lambda trial: trial.offered)

    @property
    def delivered(self) -> float:
        return self.median_of(lambda trial: trial.delivered)

    @property
    def delivered_share(self) -> float:
        """Median over the trials of delivered / offered."""
        return median(
            [trial.delivered / trial.offered if trial.offered else 0.0 for trial in self.trials]
        )

    @property
    def p99_ns(self) -> float:
        return self.median_of(lambda trial: trial.p99_ns)

    @property
    def failures(self) -> float:
        return self.median_of(lambda trial: float(trial.failures))

    def median_of(self, value: Callable[[T], float]) -> float:
        """The median of ``value`` over the trials (``nan``: none)."""
        return median([value(trial) for trial in self.trials])

    def spread(self, value: Callable[[T], float]) -> tuple[float, float]:
        """Smallest and largest ``value`` over the trials."""
        values = [value(trial) for trial in self.trials]
        return (min(values), max(values)) if values else (math.nan, math.nan)

    def sustained(self, criteria: Criteria) -> bool:
        """Judged by the median of the trials (module docstring)."""
        return (
            bool(self.trials)
            and self.failures == 0
            and self.offered >= criteria.share * self.rate
            and self.delivered_share >= criteria.share
            and self.p99_ns <= criteria.p99_limit_ms * 1e6
        )

    def trials_sustained(self, criteria: Criteria) -> int:
        """How many trials would have been sustained alone (how close the call was)."""
        return sum(RepeatedStep(self.rate, [trial]).sustained(criteria) for trial in self.trials)


def highest_sustained(
    steps: Sequence[RepeatedStep[T]], criteria: Criteria
) -> RepeatedStep[T] | None:
    """The sustained step of the highest rate, ``None`` when none was."""
    sustained = [step for step in steps if step.sustained(criteria)]
    return max(sustained, key=lambda step: step.rate) if sustained else None


def climb(
    rates: Sequence[float],
    contenders: Sequence[K],
    measure: Callable[[K, float], T],
    *,
    repeats: int,
    criteria: Criteria,
) -> dict[K, list[RepeatedStep[T]]]:
    """Every contender up the ramp of ``rates``, each step ``repeats`` times, interleaved
    (module docstring). ``measure(contender, rate)`` runs one trial."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    steps: dict[K, list[RepeatedStep[T]]] = {contender: [] for contender in contenders}
    climbing = list(contenders)
    for rate in rates:
        if not climbing:
            break
        current = {contender: RepeatedStep[T](rate) for contender in climbing}
        for repeat in range(repeats):
            for contender in climbing if repeat % 2 == 0 else reversed(climbing):
                current[contender].trials.append(measure(contender, rate))
        for contender in climbing:
            steps[contender].append(current[contender])
        climbing = [contender for contender in climbing if current[contender].sustained(criteria)]
    return steps


def median_percentile(
    step: RepeatedStep[T], histogram: Callable[[T], HdrHistogram], percentile: float
) -> float:
    """Median over the trials that measured anything of their ``percentile``, ns."""
    values = [
        float(histogram(trial).get_value_at_percentile(percentile))
        for trial in step.trials
        if histogram(trial).get_total_count()
    ]
    return median(values) if values else math.nan


def latencies(step: RepeatedStep[T], histogram: Callable[[T], HdrHistogram]) -> str:
    """Medians over the trials of p50 / p99 / p99.9, in ms (``-``: nothing measured)."""
    values = [median_percentile(step, histogram, p) for p in (50, 99, 99.9)]
    return "-" if math.isnan(values[0]) else " / ".join(ms(value) for value in values)


def value_range(low_high: tuple[float, float], render: Callable[[float], str] = number) -> str:
    """A ``spread`` as ``low-high``."""
    low, high = low_high
    return f"{render(low)}-{render(high)}"


def p99_range(step: RepeatedStep[T]) -> str:
    """The spread of the trials' p99 latency, in ms."""
    return value_range(
        step.spread(lambda trial: trial.p99_ns),
        lambda ns: "none" if math.isinf(ns) else ms(ns),
    )
