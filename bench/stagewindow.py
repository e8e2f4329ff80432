"""A server's own latency stage over a bench's measurement window.

A server under test keeps HDR histograms of its stages (``publish.metrics``) for
``/metrics`` and the dashboard, rolled once a second. A bench's trial is a window of its
own: ``StageWindow`` reads every sample a stage has recorded at the window's start and
summarizes what was recorded since when asked, without rolling or resetting anything the
server reports. It runs in the server's process, on its event loop (the helper's command
handler), so it never races the histogram's writers.
"""

from __future__ import annotations

from publish.metrics.hdr import Histogram, Summary, summarize


class StageWindow:
    """The samples of one stage's histogram since ``start`` (none watched: ``None``)."""

    def __init__(self) -> None:
        self._histogram: Histogram | None = None
        self._at_start: dict[int, int] = {}

    def watch(self, histogram: Histogram) -> None:
        self._histogram = histogram

    def start(self) -> None:
        if self._histogram is not None:
            self._at_start = self._histogram.counts_so_far()

    def summary(self) -> Summary | None:
        """p50/p90/p99/p99.9/max of the samples since ``start``, ns. O(buckets)."""
        if self._histogram is None:
            return None
        before = self._at_start
        return summarize(
            sorted(
                (index, n - before.get(index, 0))
                for index, n in self._histogram.counts_so_far().items()
                if n > before.get(index, 0)
            )
        )
