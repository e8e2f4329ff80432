"""Latency and traffic metrics: HDR histograms per stage, ``/metrics`` (Prometheus),
``/stats`` (JSON), the ``metrics`` channel's content and the ``/dashboard`` page.

``LatencyRecorder`` holds the hooks called on the hot path (registry listener, fan-out
``on_written``, storage ``on_flush``); ``Metrics`` turns them into reports once a second.
"""

from __future__ import annotations

from publish.metrics.hdr import QUANTILES, Histogram, Summary
from publish.metrics.recorder import LatencyRecorder, Stage
from publish.metrics.service import Activity, ActivityThresholds, FeedSource, Metrics

__all__ = [
    "QUANTILES",
    "Activity",
    "ActivityThresholds",
    "FeedSource",
    "Histogram",
    "LatencyRecorder",
    "Metrics",
    "Stage",
    "Summary",
]
