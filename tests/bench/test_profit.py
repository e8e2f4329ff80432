"""Scenario 3 at a tiny size: account subscribers receive profit frames on BBO changes."""

from __future__ import annotations

from bench.profit import ProfitOptions, Workload, run
from bench.report import Progress


def test_profit_ramp_reports_every_step_with_positive_figures() -> None:
    tiny = Workload("tiny", (40, 80), accounts=3, instruments=2, rate=200)
    result = run(ProfitOptions(workloads=(tiny,), warmup=0.2, seconds=0.4), Progress())

    (table,) = result.tables
    # The ramp goes on only while the p99 target holds (last column), whatever the timing.
    within = [row[-1] == "yes" for row in table.rows]
    expected = [("tiny", "40", "3", "2")] + ([("tiny", "80", "3", "2")] if within[0] else [])
    assert [row[:4] for row in table.rows] == expected
    largest = max([n for n, ok in zip((40, 80), within, strict=False) if ok], default=0)
    assert result.figures["tiny_largest_positions_within_target"] == largest
    assert sorted(result.figures) == [
        "tiny_largest_positions_within_target",
        "tiny_p99_ms_at_40",
        "tiny_profit_frames_per_s_at_40",
    ]
    assert result.figures["tiny_p99_ms_at_40"] > 0
    assert result.figures["tiny_profit_frames_per_s_at_40"] > 0
    (target,) = result.targets
    assert target.what.startswith("tiny: p99 BBO change -> profit frame, 40 positions")
