"""The ingest's flush budget: a token bucket of flushes (``bus.ingest.FlushBudget``)."""

from __future__ import annotations

import pytest

from bus.ingest import FlushBudget

MS = 0.001


def test_a_burst_goes_out_back_to_back_and_then_one_flush_per_interval() -> None:
    budget = FlushBudget(MS, 4, now=0.0)
    # Four flushes back to back; after the fourth, a whole interval's wait.
    assert [budget.spend(0.0) for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, MS])
    now = 0.0
    waits = []
    for _ in range(100):  # a busy feed: the task flushes as soon as each wait ends
        now += MS
        waits.append(budget.spend(now))
    assert waits == pytest.approx([MS] * 100)


def test_changes_an_interval_apart_never_wait() -> None:
    # 1,000 changes/s, a millisecond apart, with a little jitter either way.
    budget = FlushBudget(MS, 4, now=0.0)
    jitter = (0.0, 0.3, -0.3, 0.1, -0.2, 0.4, -0.4, 0.0)
    waits = [budget.spend((n + jitter[n % len(jitter)]) * MS) for n in range(1, 10_000)]
    assert max(waits) == 0.0


def test_a_quiet_spell_refills_no_more_than_the_burst() -> None:
    budget = FlushBudget(MS, 2, now=0.0)
    assert [budget.spend(10.0) for _ in range(2)] == pytest.approx([0.0, MS])


def test_a_wait_cut_short_is_paid_off_by_the_next() -> None:
    budget = FlushBudget(MS, 1, now=0.0)
    assert budget.spend(0.0) == pytest.approx(MS)
    # The timer fired after 0.4 ms instead of 1: the next wait makes up the 0.6 ms.
    assert budget.spend(0.4 * MS) == pytest.approx(1.6 * MS)
    # Over many flushes the rate stays one per interval, however the timers round.
    now, flushes = 0.4 * MS, 0
    while now < 1.0:
        wait = budget.spend(now)
        flushes += 1
        now += max(0.0, round(wait / MS) * MS)  # whole-millisecond timers, as uvloop's
    assert flushes <= 1_000 + 1


def test_a_zero_interval_never_waits() -> None:
    budget = FlushBudget(0.0, 1, now=0.0)
    assert [budget.spend(0.0) for _ in range(10)] == [0.0] * 10


@pytest.mark.parametrize(("interval", "burst"), [(-MS, 1), (MS, 0)])
def test_a_budget_that_could_not_work_is_refused(interval: float, burst: int) -> None:
    with pytest.raises(ValueError, match="flush budget"):
        FlushBudget(interval, burst, now=0.0)
