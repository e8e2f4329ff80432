"""Shared helpers for the metrics tests: a ``Metrics`` over the real registry, fan-out and
flusher, with injected clocks (``wall`` stamps points, the test moves the monotonic one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from book.status import InstrumentState
from publish.fanout import Fanout
from publish.metrics import ActivityThresholds, LatencyRecorder, Metrics
from publish.metrics.cpu import CpuTimes
from publish.metrics.hdr import SECOND_NS
from publish.storage import SqliteBackend, StorageFlusher
from tests.publish.support import BTC, ETH, Feed, clock, new_registry

START = 1_700_000_000_000_000_000


@dataclass
class Setup:
    feed: Feed
    fanout: Fanout
    metrics: Metrics
    now: list[int]
    cpu: list[CpuTimes]

    def at(self, seconds: float, cpu: CpuTimes | None = None) -> dict[str, Any]:
        """Tick with the monotonic clock at ``seconds`` (and the CPU clocks at ``cpu``,
        else where they were)."""
        self.now[0] = int(seconds * SECOND_NS)
        if cpu is not None:
            self.cpu[0] = cpu
        return self.metrics.tick()


def new_setup(tmp_path: Path) -> Setup:
    """BTC and ETH live, Kraken syncing; activity hot at 10/s, warm at 1/s, per minute."""
    registry = new_registry()
    recorder = LatencyRecorder()
    registry.on_snapshot(recorder.on_snapshot)
    fanout = Fanout(registry, clock=clock, metrics=lambda: metrics.report(), metrics_interval=None)
    walls = iter(range(START, START + 10**12, SECOND_NS))
    now = [0]
    cpu = [CpuTimes(0.0, 0.0)]
    metrics = Metrics(
        recorder,
        registry=registry,
        fanout=fanout.counters,
        flusher=StorageFlusher(SqliteBackend(str(tmp_path / "unused.db"))),
        activity=ActivityThresholds(hot=10.0, warm=1.0, period=60.0),
        clock=lambda: next(walls),
        monotonic=lambda: now[0],
        cpu=lambda: cpu[0],
        on_report=fanout.publish_metrics,
    )
    feed = Feed(registry)
    feed.status(BTC, InstrumentState.LIVE)
    feed.status(ETH, InstrumentState.LIVE)
    return Setup(feed, fanout, metrics, now, cpu)


def quote(feed: Feed, instrument: str, times: int) -> None:
    for n in range(times):
        feed.quote(instrument, (f"{100 + n}", "1"), ("1000", "2"))
