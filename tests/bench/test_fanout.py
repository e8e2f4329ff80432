"""Scenario 2 at a tiny size: both servers, both modes, subscribers in another process."""

from __future__ import annotations

from bench.fanout import FanoutOptions, run
from bench.report import Progress


def test_fanout_measures_both_servers_in_both_modes() -> None:
    options = FanoutOptions(
        subscribers=(5,), deliveries=(500,), instruments=3, warmup=0.1, seconds=0.3, settle=0.05
    )
    result = run(options, Progress())

    steps, summary = result.tables
    assert [(row[0], row[1], row[2], row[3] != "0") for row in steps.rows] == [
        ("5", mode, server, True)
        for mode in ("unbatched", "batch=1")
        for server in ("marketcast", "raw websockets broadcast")
    ]
    assert [(row[0], row[1]) for row in summary.rows] == [("5", "unbatched"), ("5", "batch=1")]
    assert sorted(result.figures) == sorted(
        f"n5_{mode}_{figure}"
        for mode in ("unbatched", "batched")
        for figure in (
            "marketcast_peak_frames_per_s",
            "marketcast_frames_per_core",
            "marketcast_peak_deliveries_per_s",
            "raw_peak_frames_per_s",
            "raw_frames_per_core",
        )
    )
    assert all(value > 0 for value in result.figures.values())
    assert [target.what for target in result.targets] == [
        "5 subscribers unbatched: frames/s per server core vs raw websockets broadcast"
    ]
