"""Scenario 3 at a tiny size (account subscribers get profit frames on BBO changes), and
the search for the largest position count within the latency target."""

from __future__ import annotations

import pytest

from bench.profit import ProfitOptions, Workload, _search, run
from bench.report import Progress


def test_profit_search_reports_every_step_with_positive_figures() -> None:
    tiny = Workload("tiny", 40, accounts=3, instruments=2, rate=200, search=1)
    result = run(ProfitOptions(workloads=(tiny,), warmup=0.2, seconds=0.4), Progress())

    (table,) = result.tables
    # The second count depends on the first step's outcome (last column), not on timing.
    first_within = table.rows[0][-1] == "yes"
    second = 80 if first_within else 20
    assert [row[:4] for row in table.rows] == [
        ("tiny", "40", "3", "2"),
        ("tiny", str(second), "3", "2"),
    ]
    # 20 positions or more over 3 accounts and 2 instruments: every account holds both,
    # and a change touches all 3 (counted by the server from its open positions).
    assert [row[4:6] for row in table.rows] == [("2", "3"), ("2", "3")]
    assert (
        "tiny at 40 positions: each account holds positions on 2 instruments; one BBO "
        "change touches 3 accounts" in result.how
    )
    # The server's fan-out counts over the window: encoded, sent, frames (batched).
    columns = table.columns
    assert columns[10:13] == ("messages encoded", "messages sent", "frames sent")
    for row in table.rows:
        encoded, sent, frames = (int(cell.replace(",", "")) for cell in row[10:13])
        assert encoded > 0 and sent > 0 and frames > 0
        assert frames <= sent  # one batch frame carries one message or more
    within = {int(row[1]) for row in table.rows if row[-1] == "yes"}
    assert result.figures["tiny_largest_positions_within_target"] == max(within, default=0)
    assert sorted(result.figures) == [
        "tiny_largest_positions_within_target",
        "tiny_p99_ms_at_40",
        "tiny_profit_frames_per_s_at_40",
    ]
    assert result.figures["tiny_p99_ms_at_40"] > 0
    assert result.figures["tiny_profit_frames_per_s_at_40"] > 0
    (target,) = result.targets
    assert target.what.startswith("tiny: p99 BBO change -> profit frame, 40 positions")


@pytest.mark.parametrize(
    ("outcomes", "counts"),
    [
        # doubling while within target, then bisecting between good and bad
        (
            [True, True, False, True, False, True],
            [10_000, 20_000, 40_000, 30_000, 35_000, 32_500, 33_750],
        ),
        # halving while over target, then bisecting
        (
            [False, False, True, True, False, True],
            [10_000, 5_000, 2_500, 3_750, 4_375, 4_062, 4_218],
        ),
        # stops when the interval is within 5% of the good count
        (
            [True, False, True, True, True, True, True],
            [10_000, 20_000, 15_000, 17_500, 18_750, 19_375],
        ),
    ],
)
def test_search_doubles_or_halves_then_bisects(outcomes: list[bool], counts: list[int]) -> None:
    search = _search(Workload("w", 10_000, 1, 1, 1.0, search=6))
    seen = [next(search)]
    for outcome in outcomes:
        try:
            seen.append(search.send(outcome))
        except StopIteration:
            break
    assert seen == counts
