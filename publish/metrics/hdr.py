"""HDR histograms with a hot path of one index computation and one list increment.

The bucket layout is HdrHistogram's (``hdrh``), fixed at a lowest discernible value of
1 and 3 significant figures: values up to 2047 are counted exactly, larger ones within
0.1%. ``hdrh.HdrHistogram.record_value`` costs about 1.2 us per sample in CPython (a
``bin()`` string per call); ``Histogram.record`` computes the same counts index inline
with ``int.bit_length`` and costs about 0.2 us (CPython 3.11, timeit; the tests
check it counts exactly as ``hdrh`` does). It takes no lock and allocates no
container: everything runs on the event loop.

Samples accumulate in the current interval; ``roll()`` (once a second, off the hot
path) closes it and returns its summary, adds it to a sliding window of the last
``window_intervals`` intervals and to the running count and sum. Quantiles follow
``HdrHistogram.get_value_at_percentile``: the highest value equivalent to the bucket
where the cumulative count first reaches ``round(q * count)``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from functools import cache
from itertools import accumulate, compress
from operator import mul
from typing import Any

from hdrh.histogram import HdrHistogram

SIGNIFICANT_FIGURES = 3
QUANTILES = ("0.5", 0.5e2), ("0.9", 0.9e2), ("0.99", 0.99e2), ("0.999", 0.999e2)
"""``(Prometheus quantile label, percentile)`` of the quantiles every summary reports."""

_LAYOUT = HdrHistogram(1, 2, SIGNIFICANT_FIGURES)
_MASK: int = _LAYOUT.sub_bucket_mask
"""Values below ``_MASK + 1`` (2048) share bucket 0 and are counted exactly."""
_HALF_MAGNITUDE: int = _LAYOUT.sub_bucket_half_count_magnitude
_SHIFT = _HALF_MAGNITUDE + 1
_HALF_COUNT: int = _LAYOUT.sub_bucket_half_count
assert _LAYOUT.unit_magnitude == 0 and _MASK == (1 << _SHIFT) - 1

SECOND_NS = 1_000_000_000
DEFAULT_HIGHEST = 60 * SECOND_NS
"""Largest latency tracked (ns); larger samples count as this value."""

SparseCounts = list[tuple[int, int]]
"""``(counts index, count)`` of the non-empty buckets, by ascending index."""


def counts_length(highest: int) -> int:
    """Buckets needed to track values 0..``highest`` (HdrHistogram's ``counts_len``)."""
    length: int = HdrHistogram(1, max(highest, 2), SIGNIFICANT_FIGURES).counts_len
    return length


_DEFAULT_LENGTH = counts_length(DEFAULT_HIGHEST)


def counts_index(value: int) -> int:
    """The bucket of a non-negative ``value`` (``HdrHistogram._counts_index_for``)."""
    bucket = (value | _MASK).bit_length() - _SHIFT
    return (bucket << _HALF_MAGNITUDE) + (value >> bucket)


def lowest_equivalent(index: int) -> int:
    """The smallest value counted in bucket ``index`` (``get_value_from_index``)."""
    bucket = (index >> _HALF_MAGNITUDE) - 1
    sub_bucket = (index & (_HALF_COUNT - 1)) + _HALF_COUNT
    if bucket < 0:
        return sub_bucket - _HALF_COUNT
    return sub_bucket << bucket


def equivalent_range(index: int) -> int:
    """How many values bucket ``index`` counts together (1 below 2048)."""
    return 1 << max((index >> _HALF_MAGNITUDE) - 1, 0)


def highest_equivalent(index: int) -> int:
    """The largest value counted in bucket ``index`` (``get_highest_equivalent_value``)."""
    return lowest_equivalent(index) + equivalent_range(index) - 1


def median_equivalent(index: int) -> int:
    """The value a bucket stands for in sums and means (HdrHistogram's convention)."""
    return lowest_equivalent(index) + (equivalent_range(index) >> 1)


@dataclass(frozen=True, slots=True)
class Summary:
    """Count, sum and quantiles of a set of samples; quantiles and max are ``None`` when
    there were none. ``total`` is the sum of each sample's bucket median (within 0.05%
    of the exact sum; exact below 2048)."""

    count: int
    total: int
    p50: int | None
    p90: int | None
    p99: int | None
    p999: int | None
    max: int | None

    @property
    def quantiles(self) -> tuple[int | None, ...]:
        """The values at ``QUANTILES``, in that order."""
        return (self.p50, self.p90, self.p99, self.p999)

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.total,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
        }


EMPTY = Summary(0, 0, None, None, None, None, None)


def summarize(sparse: SparseCounts) -> Summary:
    """Count, bucket-median sum and quantiles of ``sparse`` counts. O(len(sparse)), every
    step at C speed (bucket values come from ``_bucket_values``'s tables)."""
    if not sparse:
        return EMPTY
    indices, ns = zip(*sparse, strict=True)
    count = sum(ns)
    if not count:
        return EMPTY
    medians, highest = _bucket_values(indices[-1] + 1)
    total = sum(map(mul, ns, map(medians.__getitem__, indices)))
    seen = list(accumulate(ns))
    p50, p90, p99, p999 = (
        highest[indices[bisect_left(seen, max(int(percentile * count / 100 + 0.5), 1))]]
        for _, percentile in QUANTILES
    )
    return Summary(count, total, p50, p90, p99, p999, highest[indices[-1]])


@cache
def _value_tables(length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``median_equivalent`` and ``highest_equivalent`` of every bucket below ``length``
    (at least), as tables, so a summary indexes them instead of calling three functions
    per bucket. Built from one ``range`` per magnitude (1,024 buckets of equal width):
    about 3 ms for the 27,648 buckets of a 60 s histogram, once per process and size."""
    medians: list[int] = []
    highest: list[int] = []
    level = 0
    while len(medians) < length:
        bucket = level - 1
        width = 1 << max(bucket, 0)
        first = 0 if bucket < 0 else _HALF_COUNT << bucket
        stop = first + _HALF_COUNT * width
        medians.extend(range(first + (width >> 1), stop + (width >> 1), width))
        highest.extend(range(first + width - 1, stop + width - 1, width))
        level += 1
    return tuple(medians), tuple(highest)


def _bucket_values(length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The value tables for buckets below ``length``: those of the default highest value
    unless ``length`` needs more."""
    return _value_tables(max(length, _DEFAULT_LENGTH))


_BLOCK = 256
"""Buckets ``_sparse`` checks at once."""


def _sparse(counts: list[int]) -> SparseCounts:
    """The non-empty buckets of ``counts``. Latencies crowd into a few hundred of the
    27,648 buckets of a 60 s histogram, so a block without samples is skipped by
    ``list.count`` at C speed, making no int objects: a fraction of a millisecond for a
    histogram with few samples, where a ``compress`` over every index costs about 1.2 ms.

    One ``count`` over the whole list first says how many buckets hold samples: none (a
    stage that saw nothing this interval, as most do in a server that does not use them)
    costs that one pass (25 against 190 µs on the benchmark VM), and the blocks past the
    last one that holds samples (slower than any latency seen) are not looked at."""
    sparse: SparseCounts = []
    filled = len(counts) - counts.count(0)
    for start in range(0, len(counts), _BLOCK):
        if len(sparse) >= filled:
            break
        block = counts[start : start + _BLOCK]
        if block.count(0) != len(block):
            indices = compress(range(start, start + len(block)), block)
            sparse.extend(zip(indices, compress(block, block), strict=True))
    return sparse


class Histogram:
    """One stage's samples: the current interval, a sliding window, running totals."""

    __slots__ = (
        "highest",
        "count",
        "total",
        "last",
        "since_start",
        "_counts",
        "_window",
        "_window_summary",
        "_recent",
    )

    def __init__(self, *, highest: int = DEFAULT_HIGHEST, window_intervals: int = 60) -> None:
        if highest < 1 or window_intervals < 1:
            raise ValueError("highest and window_intervals must be at least 1")
        self.highest = highest
        self.count = 0
        """Samples in every closed interval since creation."""
        self.total = 0
        """Their sum (bucket medians, see ``Summary``)."""
        self.last = EMPTY
        """The summary of the last closed interval."""
        self.since_start: dict[int, int] = {}
        """Counts index -> samples in every closed interval since creation (what cumulative
        Prometheus histogram buckets are computed from)."""
        self._counts = [0] * counts_length(highest)
        self._window: dict[int, int] = {}
        self._window_summary: Summary | None = EMPTY
        """``window``'s value, ``None`` until computed after the window changed."""
        self._recent: deque[SparseCounts] = deque(maxlen=window_intervals)

    @property
    def window(self) -> Summary:
        """The summary of the last ``window_intervals`` closed intervals. Computed when
        read (``/stats``, a Prometheus scrape), not at every roll: O(non-empty buckets of
        the window), a few milliseconds for a busy stage, which the roll on the event loop
        once a second would otherwise pay for every histogram whether read or not."""
        summary = self._window_summary
        if summary is None:
            summary = self._window_summary = summarize(sorted(self._window.items()))
        return summary

    def record(self, value: int) -> None:
        """Count one sample; below 0 counts as 0, above ``highest`` as ``highest``.

        Hot path, about 0.2 us: two comparisons, an index computation, a list increment.
        """
        if value < 0:
            value = 0
        elif value > self.highest:
            value = self.highest
        bucket = (value | _MASK).bit_length() - _SHIFT
        self._counts[(bucket << _HALF_MAGNITUDE) + (value >> bucket)] += 1

    def counts_so_far(self) -> dict[int, int]:
        """Every sample recorded so far, the current interval's too, by counts index: two
        readings diffed summarize the samples of a span of the caller's own (a bench's
        trial) with ``summarize``. O(buckets / 256) at C speed plus O(non-empty buckets);
        changes nothing."""
        counts = dict(self.since_start)
        for index, n in _sparse(self._counts):
            counts[index] = counts.get(index, 0) + n
        return counts

    def roll(self) -> Summary:
        """Close the current interval and return its summary; update ``window``, ``count``
        and ``total``. O(buckets / 256) at C speed plus O(non-empty buckets of the
        interval and of the one leaving the window); ``window`` is summarized when read."""
        counts = self._counts
        sparse = _sparse(counts)
        for index, _ in sparse:  # zeroed in place: a new list of every bucket each second
            counts[index] = 0  # would be young, so walked by every collection for a while
        window = self._window
        recent = self._recent
        changed = bool(sparse)
        if len(recent) == recent.maxlen:
            expired = recent[0]
            changed = changed or bool(expired)
            for index, n in expired:
                left = window[index] - n
                if left:
                    window[index] = left
                else:
                    del window[index]
        recent.append(sparse)
        since_start = self.since_start
        for index, n in sparse:
            window[index] = window.get(index, 0) + n
            since_start[index] = since_start.get(index, 0) + n
        self.last = summarize(sparse)
        if changed:
            self._window_summary = None
        self.count += self.last.count
        self.total += self.last.total
        return self.last
