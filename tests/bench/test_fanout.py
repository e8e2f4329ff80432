"""Scenario 2 at a tiny size: both servers, both modes, subscribers in other processes,
every step repeated and interleaved, the headline from the median."""

from __future__ import annotations

import re

from bench.fanout import FanoutOptions, run
from bench.report import Progress


def test_fanout_measures_both_servers_in_both_modes_with_repeated_steps() -> None:
    options = FanoutOptions(
        subscribers=(5,),
        deliveries=(500, 1000),
        instruments=3,
        warmup=0.1,
        seconds=0.3,
        repeats=3,
        settle=0.05,
    )
    result = run(options, Progress())

    steps, headline = result.tables
    # Which steps are sustained depends on the machine; the shape does not: each server
    # starts the ramp, and climbs on only from a step it sustained by the median.
    climbs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for row in steps.rows:
        assert row[0] == "5"
        assert re.fullmatch(r"(yes|no) \([0-3] of 3\)", row[-1])
        climbs.setdefault((row[1], row[2]), []).append((row[3], row[-1].split()[0]))
    assert list(climbs) == [
        (mode, server)
        for mode in ("unbatched", "batch=1")
        for server in ("marketcast", "raw websockets broadcast")
    ]
    for ramp in climbs.values():
        assert [rate for rate, _ in ramp] == ["500", "1,000"][: len(ramp)]
        assert all(verdict == "yes" for _, verdict in ramp[:-1])
    assert [row[:2] for row in headline.rows] == [("5", "unbatched"), ("5", "batch=1")]
    for row in headline.rows:
        mode = row[1]
        for column, server in ((2, "marketcast"), (3, "raw websockets broadcast")):
            sustained = [rate for rate, verdict in climbs[mode, server] if verdict == "yes"]
            assert row[column] == (sustained[-1] if sustained else "none")
    assert sorted(result.figures) == sorted(
        f"n5_{mode}_{figure}"
        for mode in ("unbatched", "batched")
        for figure in (
            "marketcast_sustained_deliveries_per_s",
            "marketcast_peak_frames_per_s",
            "marketcast_frames_per_core",
            "marketcast_peak_deliveries_per_s",
            "raw_sustained_deliveries_per_s",
            "raw_peak_frames_per_s",
            "raw_frames_per_core",
        )
    )
    assert result.figures["n5_unbatched_marketcast_peak_frames_per_s"] > 0
    for row in headline.rows:
        compared = [t for t in result.targets if t.what.startswith(f"5 subscribers {row[1]}:")]
        if row[2] == row[3] == "none":  # neither sustained anything: no comparison
            assert compared == []
            assert any(note.startswith(f"5 subscribers {row[1]}: neither") for note in result.notes)
        else:
            (target,) = compared
            assert target.what == (
                f"5 subscribers {row[1]}: highest sustained deliveries/s (median of 3), "
                "marketcast vs raw websockets broadcast's"
            )
            assert target.measured == (0 if row[2] == "none" else int(row[2].replace(",", "")))
            assert target.required == (0 if row[3] == "none" else int(row[3].replace(",", "")))


def test_the_latency_limit_grows_with_subscribers_past_a_thousand() -> None:
    # One change is written to every subscriber in turn on one core: past 1,000 the
    # limit grows with them, so 5,000 subscribers are judged on the server, not the count.
    from bench.fanout import criteria_for

    assert [criteria_for(n).p99_limit_ms for n in (5, 100, 1_000, 2_000, 5_000)] == [
        20.0,
        20.0,
        20.0,
        40.0,
        100.0,
    ]
    assert {criteria_for(n).share for n in (5, 5_000)} == {0.95}
