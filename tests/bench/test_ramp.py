"""Repeated, interleaved ramp steps judged by their median (no sockets: made-up trials)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from bench.ramp import Criteria, RepeatedStep, climb, highest_sustained, p99_range

CRITERIA = Criteria(share=0.95, p99_limit_ms=20.0)


@dataclass(frozen=True)
class Made:
    offered: float
    delivered: float
    p99_ns: float = 1e6
    failures: int = 0


def step(*trials: Made, rate: float = 1000.0) -> RepeatedStep[Made]:
    return RepeatedStep(rate, list(trials))


def test_one_hiccup_among_three_trials_does_not_flip_a_step() -> None:
    hiccup = Made(1000, 400, p99_ns=65e6)
    assert step(Made(1000, 1000), hiccup, Made(1000, 990)).sustained(CRITERIA)
    assert not step(hiccup).sustained(CRITERIA)
    assert step(Made(1000, 1000), hiccup, Made(1000, 990)).trials_sustained(CRITERIA) == 2


def test_two_bad_trials_of_three_make_the_step_not_sustained() -> None:
    assert not step(Made(1000, 900), Made(1000, 1000), Made(1000, 930)).sustained(CRITERIA)
    assert not step(
        Made(1000, 1000, p99_ns=25e6), Made(1000, 1000, p99_ns=21e6), Made(1000, 1000)
    ).sustained(CRITERIA)
    assert not step(
        Made(1000, 1000, failures=1), Made(1000, 1000, failures=3), Made(1000, 1000)
    ).sustained(CRITERIA)


def test_the_limits_are_inclusive() -> None:
    assert step(Made(1000, 950, p99_ns=20e6)).sustained(CRITERIA)
    assert not step(Made(1000, 949, p99_ns=20e6)).sustained(CRITERIA)
    assert not step(Made(1000, 950, p99_ns=20e6 + 1)).sustained(CRITERIA)


def test_a_rate_the_driver_could_not_offer_is_not_sustained() -> None:
    assert step(Made(950, 950)).sustained(CRITERIA)
    assert not step(Made(940, 940)).sustained(CRITERIA)


def test_nothing_measured_is_not_sustained() -> None:
    assert not step().sustained(CRITERIA)
    assert not step(Made(1000, 1000, p99_ns=math.inf)).sustained(CRITERIA)
    assert not step(Made(0, 0)).sustained(CRITERIA)


def test_medians_and_spread() -> None:
    repeated = step(Made(1000, 800, 3e6), Made(1000, 1000, 1e6), Made(990, 900, 9e6))
    assert repeated.delivered == 900
    assert repeated.offered == 1000
    assert repeated.p99_ns == 3e6
    assert repeated.delivered_share == pytest.approx(900 / 990)
    assert repeated.spread(lambda trial: trial.delivered) == (800, 1000)


def test_climb_interleaves_contenders_and_stops_each_after_its_first_miss() -> None:
    capacity = {"ours": 3000.0, "floor": 1500.0}
    calls: list[tuple[str, float]] = []

    def measure(contender: str, rate: float) -> Made:
        calls.append((contender, rate))
        return Made(rate, min(rate, capacity[contender]))

    steps = climb(
        [1000, 2000, 4000, 8000], ["ours", "floor"], measure, repeats=3, criteria=CRITERIA
    )

    assert calls == [
        ("ours", 1000), ("floor", 1000), ("floor", 1000), ("ours", 1000),
        ("ours", 1000), ("floor", 1000),
        ("ours", 2000), ("floor", 2000), ("floor", 2000), ("ours", 2000),
        ("ours", 2000), ("floor", 2000),
        ("ours", 4000), ("ours", 4000), ("ours", 4000),
    ]  # fmt: skip
    assert [s.rate for s in steps["ours"]] == [1000, 2000, 4000]
    assert [s.rate for s in steps["floor"]] == [1000, 2000]
    assert [len(s.trials) for s in steps["ours"]] == [3, 3, 3]
    best_ours = highest_sustained(steps["ours"], CRITERIA)
    best_floor = highest_sustained(steps["floor"], CRITERIA)
    assert best_ours is not None and best_ours.rate == 2000
    assert best_floor is not None and best_floor.rate == 1000


def test_a_contender_that_sustains_nothing_has_no_headline() -> None:
    steps = climb([1000, 2000], ["x"], lambda _, rate: Made(rate, 0), repeats=1, criteria=CRITERIA)
    assert [s.rate for s in steps["x"]] == [1000]
    assert highest_sustained(steps["x"], CRITERIA) is None


def test_repeats_must_be_positive() -> None:
    with pytest.raises(ValueError, match="repeats"):
        climb([1000], ["x"], lambda _, rate: Made(rate, rate), repeats=0, criteria=CRITERIA)


def test_the_p99_range_renders_without_exponents() -> None:
    repeated = step(Made(1000, 1000, p99_ns=12_345e6), Made(1000, 1000, p99_ns=math.inf))
    assert p99_range(repeated) == "12,345-none"
    assert p99_range(step(Made(1000, 1000, p99_ns=1.5e6), Made(1000, 1000, p99_ns=2e6))) == (
        "1.5-2"
    )
