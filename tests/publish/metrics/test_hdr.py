"""The fast HDR histogram counts exactly as hdrh does and reports hdrh's quantiles."""

from __future__ import annotations

import random

from hdrh.histogram import HdrHistogram
from hypothesis import given
from hypothesis import strategies as st

from publish.metrics.hdr import (
    DEFAULT_HIGHEST,
    EMPTY,
    QUANTILES,
    SIGNIFICANT_FIGURES,
    Histogram,
    Summary,
    counts_index,
    counts_length,
    highest_equivalent,
    lowest_equivalent,
    median_equivalent,
)


def reference(values: list[int], highest: int = DEFAULT_HIGHEST) -> HdrHistogram:
    histogram = HdrHistogram(1, highest, SIGNIFICANT_FIGURES)
    for value in values:
        assert histogram.record_value(value)
    return histogram


def reference_summary(values: list[int]) -> Summary:
    """What hdrh itself says about ``values``."""
    ref = reference(values)
    p50, p90, p99, p999 = (ref.get_value_at_percentile(p) for _, p in QUANTILES)
    total = sum(median_equivalent(counts_index(value)) for value in values)
    return Summary(len(values), total, p50, p90, p99, p999, ref.get_max_value())


def test_index_and_value_mapping_are_hdrh_s() -> None:
    ref = HdrHistogram(1, DEFAULT_HIGHEST, SIGNIFICANT_FIGURES)
    assert counts_length(DEFAULT_HIGHEST) == ref.counts_len
    rng = random.Random(7)
    values = [*range(5000), *(rng.randrange(DEFAULT_HIGHEST + 1) for _ in range(5000))]
    values += [(1 << bit) + delta for bit in range(11, 36) for delta in (-1, 0, 1)]
    values.append(DEFAULT_HIGHEST)
    for value in values:
        assert counts_index(value) == ref._counts_index_for(value), value
    for index in range(ref.counts_len):
        lowest = ref.get_value_from_index(index)
        assert lowest_equivalent(index) == lowest, index
        assert highest_equivalent(index) == ref.get_highest_equivalent_value(lowest), index
        assert median_equivalent(index) == ref._hdr_median_equiv_value(lowest), index


def test_known_samples_give_exact_quantiles() -> None:
    histogram = Histogram()
    for value in range(1, 1001):
        histogram.record(value)
    expected = Summary(1000, 500500, 500, 900, 990, 999, 1000)
    assert histogram.roll() == expected
    assert histogram.last == expected
    assert histogram.window == expected
    assert (histogram.count, histogram.total) == (1000, 500500)


def test_microsecond_samples_report_within_three_significant_figures() -> None:
    histogram = Histogram()
    values = [1_000 * k for k in range(1, 10_001)]  # 1 us .. 10 ms
    for value in values:
        histogram.record(value)
    summary = histogram.roll()
    assert summary == reference_summary(values)
    assert summary.quantiles == (5_001_215, 9_003_007, 9_904_127, 9_994_239)
    exact_quantiles = (5_000_000, 9_000_000, 9_900_000, 9_990_000)
    for exact, reported in zip(exact_quantiles, summary.quantiles, strict=True):
        assert reported is not None and abs(reported - exact) <= exact * 0.001 + 1_000


@given(st.lists(st.integers(min_value=0, max_value=DEFAULT_HIGHEST), min_size=1, max_size=300))
def test_any_samples_summarize_as_hdrh_does(values: list[int]) -> None:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    assert histogram.roll() == reference_summary(values)


def test_out_of_range_samples_are_clamped() -> None:
    histogram = Histogram(highest=10_000)
    for value in (-5, -1, 20_000, 10**15):
        histogram.record(value)
    top = highest_equivalent(counts_index(10_000))
    assert histogram.roll() == Summary(
        4, 2 * median_equivalent(counts_index(10_000)), 0, top, top, top, top
    )


def test_the_window_holds_the_last_intervals_and_totals_run_since_start() -> None:
    histogram = Histogram(window_intervals=2)
    for value in (100, 200, 300):
        for _ in range(10):
            histogram.record(value)
        histogram.roll()
    assert histogram.last == Summary(10, 3000, 300, 300, 300, 300, 300)
    assert histogram.window == Summary(20, 5000, 200, 300, 300, 300, 300)
    assert (histogram.count, histogram.total) == (30, 6000)
    assert histogram.roll() == EMPTY
    assert histogram.window == Summary(10, 3000, 300, 300, 300, 300, 300)
    histogram.roll()
    assert histogram.window == EMPTY
    assert (histogram.count, histogram.total) == (30, 6000)


def test_summary_json_shape() -> None:
    assert Summary(3, 6, 2, 3, 3, 3, 3).as_json() == {
        "count": 3,
        "sum": 6,
        "p50": 2,
        "p90": 3,
        "p99": 3,
        "p999": 3,
        "max": 3,
    }
    assert EMPTY.as_json() == {
        "count": 0,
        "sum": 0,
        "p50": None,
        "p90": None,
        "p99": None,
        "p999": None,
        "max": None,
    }


@given(st.lists(st.lists(st.integers(0, 2 * DEFAULT_HIGHEST), max_size=30), max_size=6))
def test_the_window_read_after_any_rolls_summarizes_the_last_intervals(
    intervals: list[list[int]],
) -> None:
    histogram = Histogram(window_intervals=3)
    for closed, values in enumerate(intervals, start=1):
        for value in values:
            histogram.record(value)
        histogram.roll()
        in_window = [value for recent in intervals[max(0, closed - 3) : closed] for value in recent]
        reference = Histogram(window_intervals=1)
        for value in in_window:
            reference.record(value)
        assert histogram.window == reference.roll()


@given(st.lists(st.integers(0, DEFAULT_HIGHEST), max_size=40))
def test_every_filled_bucket_is_found_first_and_last_included(values: list[int]) -> None:
    histogram = Histogram()
    for value in [*values, 0, DEFAULT_HIGHEST]:
        histogram.record(value)
    expected: dict[int, int] = {}
    for value in [*values, 0, DEFAULT_HIGHEST]:
        expected[counts_index(value)] = expected.get(counts_index(value), 0) + 1
    assert histogram.counts_so_far() == expected
    assert histogram.roll().count == len(values) + 2
    assert histogram.counts_so_far() == expected  # now closed: the same, since start
    assert histogram.roll() == EMPTY  # an interval without samples
