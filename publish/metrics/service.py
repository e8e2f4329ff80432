"""The once-a-second side of metrics: close the histograms' interval, compute rates and
instrument activity, keep a short history; serve it as ``/stats`` JSON, the ``metrics``
channel's content and (``publish.metrics.prometheus``) ``/metrics``.

Nothing here is on the hot path: the tick runs once per ``interval`` and costs
O(histogram buckets) at C speed plus O(non-empty buckets + instruments + venues) in
Python, rolling one histogram per event-loop iteration so that no connection waits for
all of them at once; readers get values computed by the last tick.

One history point (and the ``metrics`` channel message, with ``venues`` and
``instruments`` added)::

    {"ts": 1700000000000000000, "interval_ns": 1000012345,
     "stages": {"ingest": {"count": 812, "sum": 21000000, "p50": 24031, "p90": ...,
                           "p99": ..., "p999": ..., "max": ...}, "publish": ..., ...},
     "feed_latency": {"binance": {...}},
     "rates": {"feed_frames": 812.0, "feed_messages": 812.0, "messages_sent": ...,
               "frames_sent": ..., "conflated": ..., "db_rows": ...},
     "clients": 3, "db_pending_rows": 0,
     "cpu": {"process": 0.63, "event_loop": 0.4}}

``cpu`` is the interval's CPU as shares of one core: the whole process's, and the event
loop's thread's alone (``publish.metrics.cpu``: the loop is what saturates first; the
process's other threads, SQLite's writer, use the machine's other cores). Latencies are
integer nanoseconds (the wire protocol's unit); a stage with no samples in
the interval has ``null`` quantiles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson

from book.counters import FeedCounters
from book.instruments import venue_of
from book.registry import BookRegistry
from book.status import InstrumentState
from publish.fanout import Counters
from publish.metrics.cpu import CpuTimes, cpu_times
from publish.metrics.hdr import SECOND_NS
from publish.metrics.recorder import LatencyRecorder
from publish.storage.flusher import FlusherStats, StorageFlusher, StorageHealth

log = logging.getLogger(__name__)


class Activity(StrEnum):
    """How busy an instrument is, from its update rate over the last activity period."""

    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityThresholds:
    hot: float = 10.0
    """Updates per second at or above which an instrument is hot."""
    warm: float = 0.1
    """At or above this (and below ``hot``): warm; below: cold."""
    period: float = 60.0
    """Seconds between reclassifications (the rate is averaged over this period)."""

    def __post_init__(self) -> None:
        if not 0 < self.warm <= self.hot or self.period <= 0:
            raise ValueError("need 0 < warm <= hot and a positive period")

    def classify(self, rate: float) -> Activity:
        if rate >= self.hot:
            return Activity.HOT
        return Activity.WARM if rate >= self.warm else Activity.COLD


class FeedSource(Protocol):
    """What metrics reads of a feed connection (``feeds.runner.FeedRunner``)."""

    @property
    def venue(self) -> str: ...

    @property
    def counters(self) -> FeedCounters: ...

    @property
    def connections(self) -> int: ...


@dataclass(slots=True)
class InstrumentActivity:
    """One instrument's rates: ``rate`` over the last interval, ``period_rate`` over the
    last activity period (what ``activity`` was classified from)."""

    updates: int = 0
    rate: float = 0.0
    period_rate: float = 0.0
    activity: Activity = Activity.COLD
    updates_at_period_start: int = 0


RATE_SOURCES = ("feed_frames", "feed_messages", "messages_sent", "frames_sent", "conflated")


class Metrics:
    """Reports of one server, recomputed every ``interval`` seconds by ``run()``."""

    def __init__(
        self,
        recorder: LatencyRecorder,
        *,
        registry: BookRegistry,
        fanout: Counters,
        feeds: Sequence[FeedSource] = (),
        flusher: StorageFlusher | None = None,
        interval: float = 1.0,
        history: int = 300,
        activity: ActivityThresholds = ActivityThresholds(),  # noqa: B008 (frozen)
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
        cpu: Callable[[], CpuTimes] = cpu_times,
        on_report: Callable[[], None] | None = None,
    ) -> None:
        if interval <= 0 or history < 1:
            raise ValueError("interval must be positive and history at least 1")
        self.recorder = recorder
        self.registry = registry
        self.fanout = fanout
        self.feeds = tuple(feeds)
        self.flusher = flusher
        self.interval = interval
        self.thresholds = activity
        self._clock = clock
        self._monotonic = monotonic
        self.started = clock()
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.instruments: dict[str, InstrumentActivity] = {}
        self._last_tick = monotonic()
        self._period_start = self._last_tick
        self._classified = False
        self._on_report = on_report
        self.tick_errors = 0
        """Ticks that raised (the first is logged); reporting goes on with the next one."""
        self._cpu_times = cpu
        self.cpu = cpu()
        """CPU seconds so far at the last tick (built, and ticked, on the event loop)."""
        self._totals = self._rate_totals()
        # Until the first tick: every stage empty, every rate and share 0.
        self._report = self._compose(
            self._point(0, dict.fromkeys(self._totals, 0.0), CpuTimes(0.0, 0.0))
        )

    # -- the tick ------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every ``interval`` seconds and sample event-loop lag, until cancelled."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.recorder.sample_loop_lag(), name="metrics:loop-lag")
            due = loop.time()
            while True:
                due = max(due + self.interval, loop.time())
                await asyncio.sleep(due - loop.time())
                try:
                    now = self._monotonic()
                    for histogram in self.recorder.histograms():
                        histogram.roll()
                        # One histogram per loop iteration: a busy stage's roll takes a
                        # millisecond or two, and all of them at once would stall every
                        # connection for their sum once a second.
                        await asyncio.sleep(0)
                    self._close_interval(now)
                except Exception:  # task boundary: a metrics bug must not stop the server
                    self.tick_errors += 1
                    if self.tick_errors == 1:
                        log.exception("metrics report failed; counting further failures")

    def tick(self) -> dict[str, Any]:
        """Close the interval: roll every histogram, compute rates and activity, append a
        history point, call ``on_report``. Returns the new ``metrics`` channel content."""
        now = self._monotonic()
        for histogram in self.recorder.histograms():
            histogram.roll()
        return self._close_interval(now)

    def _close_interval(self, now: int) -> dict[str, Any]:
        """``tick`` after the histograms rolled: rates, activity, the history point and
        ``on_report``, for the interval that ended at ``now``."""
        elapsed_ns = max(now - self._last_tick, 1)
        self._last_tick = now
        seconds = elapsed_ns / SECOND_NS
        totals = self._rate_totals()
        rates = {
            name: round((totals[name] - self._totals.get(name, 0)) / seconds, 3) for name in totals
        }
        self._totals = totals
        cpu, self.cpu = self.cpu, self._cpu_times()
        self._update_instruments(now, seconds)
        point = self._point(elapsed_ns, rates, self.cpu.since(cpu).shares(seconds))
        self.history.append(point)
        self._report = self._compose(point)
        if self._on_report is not None:
            self._on_report()
        return self._report

    def _point(self, elapsed_ns: int, rates: dict[str, float], cpu: CpuTimes) -> dict[str, Any]:
        """One history point from the histograms' last intervals and the interval's CPU
        ``cpu`` (shares of a core; see the module doc)."""
        recorder = self.recorder
        storage = self.storage()
        return {
            "ts": self._clock(),
            "interval_ns": elapsed_ns,
            "stages": {
                stage.value: histogram.last.as_json()
                for stage, histogram in recorder.stages.items()
            },
            "feed_latency": {
                venue: histogram.last.as_json()
                for venue, histogram in sorted(recorder.feed_latency.items())
            },
            "rates": rates,
            "clients": self.fanout.clients,
            "db_pending_rows": storage.pending_rows if storage is not None else 0,
            "cpu": {"process": round(cpu.process, 3), "event_loop": round(cpu.event_loop, 3)},
        }

    def _compose(self, point: dict[str, Any]) -> dict[str, Any]:
        return {**point, "venues": self.venues(), "instruments": self.instrument_rows()}

    def add_feeds(self, feeds: Sequence[FeedSource]) -> None:
        """Report these feed connections too (they are built after the fan-out)."""
        self.feeds += tuple(feeds)
        self._totals = self._rate_totals()

    def report(self) -> Mapping[str, object]:
        """The ``metrics`` channel's content: the last tick's point, venues, instruments."""
        return self._report

    def _rate_totals(self) -> dict[str, int]:
        feeds = _distinct_counters(self.feeds)
        storage = self.flusher.stats() if self.flusher is not None else None
        return {
            "feed_frames": sum(counters.frames for counters in feeds),
            "feed_messages": sum(counters.book_messages for counters in feeds),
            "messages_sent": self.fanout.messages_sent,
            "frames_sent": self.fanout.frames_sent,
            "conflated": self.fanout.conflated,
            "db_rows": storage.rows_written if storage is not None else 0,
        }

    def _update_instruments(self, now: int, seconds: float) -> None:
        tallies = self.recorder.instruments
        for name in self.registry.instruments():
            state = self.instruments.get(name)
            if state is None:
                state = self.instruments[name] = InstrumentActivity()
            tally = tallies.get(name)
            updates = tally.updates if tally is not None else 0
            state.rate = round((updates - state.updates) / seconds, 3)
            state.updates = updates
        period_seconds = (now - self._period_start) / SECOND_NS
        if self._classified and period_seconds < self.thresholds.period:
            return
        # The first tick classifies from what it has; then once per period.
        self._classified = True
        self._period_start = now
        for state in self.instruments.values():
            state.period_rate = round(
                (state.updates - state.updates_at_period_start) / period_seconds, 3
            )
            state.updates_at_period_start = state.updates
            state.activity = self.thresholds.classify(state.period_rate)

    # -- views ---------------------------------------------------------------------------

    def venues(self) -> dict[str, dict[str, Any]]:
        """Per venue: its feeds' counters summed, connections made, instruments per state."""
        venues: dict[str, dict[str, Any]] = {}
        seen: set[int] = set()
        for feed in self.feeds:
            venue = venues.setdefault(feed.venue, {"connections": 0})
            venue["connections"] += feed.connections
            if id(feed.counters) in seen:
                continue
            seen.add(id(feed.counters))
            for name, value in int_fields(feed.counters).items():
                venue[name] = venue.get(name, 0) + value
        states: dict[str, Counter[str]] = {}
        for status in self.registry.statuses():
            states.setdefault(venue_of(status.instrument), Counter())[status.state.value] += 1
        for name, counts in states.items():
            venue = venues.setdefault(name, {"connections": 0})
            venue["instruments"] = {state.value: counts[state.value] for state in InstrumentState}
        return dict(sorted(venues.items()))

    def instrument_rows(self) -> dict[str, dict[str, Any]]:
        """Per instrument: state, reason, latest seq, updates, rates and activity."""
        rows: dict[str, dict[str, Any]] = {}
        for status in self.registry.statuses():
            snapshot = self.registry.get(status.instrument)
            activity = self.instruments.get(status.instrument, InstrumentActivity())
            rows[status.instrument] = {
                "state": status.state.value,
                "reason": status.reason,
                "seq": snapshot.seq if snapshot is not None else None,
                "updates": activity.updates,
                "update_rate": activity.rate,
                "period_rate": activity.period_rate,
                "activity": activity.activity.value,
            }
        return rows

    def storage(self) -> FlusherStats | None:
        return self.flusher.stats() if self.flusher is not None else None

    def stats(self, *, since: int = 0) -> dict[str, Any]:
        """The ``/stats`` object; ``history`` holds the points with ``ts`` after ``since``."""
        recorder = self.recorder
        storage = self.storage()
        return {
            "ts": self._clock(),
            "started": self.started,
            "interval_s": self.interval,
            "latest": self.history[-1] if self.history else None,
            "window": {
                "seconds": self.interval * recorder.window_intervals,
                "stages": {
                    stage.value: histogram.window.as_json()
                    for stage, histogram in recorder.stages.items()
                },
                "feed_latency": {
                    venue: histogram.window.as_json()
                    for venue, histogram in sorted(recorder.feed_latency.items())
                },
            },
            "totals": {
                "stages": {
                    stage.value: {"count": histogram.count, "sum": histogram.total}
                    for stage, histogram in recorder.stages.items()
                },
                "feed_latency": {
                    venue: {"count": histogram.count, "sum": histogram.total}
                    for venue, histogram in sorted(recorder.feed_latency.items())
                },
            },
            "counters": dataclasses.asdict(self.fanout),
            "venues": self.venues(),
            "instruments": self.instrument_rows(),
            "storage": None if storage is None else _storage_json(storage),
            "history": [point for point in self.history if point["ts"] > since],
        }

    def stats_json(
        self, *, since: int = 0, sections: Mapping[str, Callable[[], Any]] = {}
    ) -> bytes:
        """``stats`` as JSON, with a key for each of ``sections`` holding what its
        callable returns now (what ``publish`` does not see: ``app``'s heap keeper)."""
        stats = self.stats(since=since)
        stats.update((name, read()) for name, read in sections.items())
        return orjson.dumps(stats)


def int_fields(counters: Any) -> dict[str, int]:
    """The integer fields of a dataclass of counters by name (``FeedCounters``'
    per-instrument dict left out)."""
    return {
        field.name: value
        for field in dataclasses.fields(counters)
        if isinstance(value := getattr(counters, field.name), int)
    }


def _distinct_counters(feeds: Sequence[FeedSource]) -> list[FeedCounters]:
    """Each ``FeedCounters`` once, however many connections share it."""
    return list({id(feed.counters): feed.counters for feed in feeds}.values())


def _storage_json(stats: FlusherStats) -> dict[str, Any]:
    values = dataclasses.asdict(stats)
    values["health"] = stats.health.value
    values["healthy"] = stats.health is StorageHealth.HEALTHY
    return values
