"""A stage's samples over a bench's window: those recorded before its start are left out,
whether the server's once-a-second roll closed their interval or not, and a roll inside
the window loses none; the histogram the server reports is left as it was."""

from __future__ import annotations

from bench.stagewindow import StageWindow
from publish.metrics.hdr import Histogram


def test_only_the_samples_since_the_start_are_summarized_across_rolls() -> None:
    histogram = Histogram()
    window = StageWindow()
    assert window.summary() is None  # nothing watched
    window.watch(histogram)
    for value in (1_000, 2_000):
        histogram.record(value)
    histogram.roll()
    histogram.record(3_000)  # before the start, in the interval still open
    window.start()
    histogram.record(5_000_000)
    histogram.roll()  # the server's report, inside the window
    histogram.record(7_000_000)
    histogram.record(9_000_000)

    summary = window.summary()
    assert summary is not None and summary.count == 3
    assert summary.p50 is not None and 6_900_000 <= summary.p50 <= 7_100_000
    assert summary.max is not None and 8_900_000 <= summary.max <= 9_100_000
    assert histogram.count == 4  # the server's own totals: its rolls only
    assert histogram.roll().count == 2
