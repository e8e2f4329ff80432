"""The hot-path side of metrics: hooks the feeds, fan-out and storage call per event.

Every hook records into ``publish.metrics.hdr.Histogram`` (about 0.2 us a sample) and
bumps plain integers; nothing is computed until the once-a-second report
(``publish.metrics.service``). Stages, all in nanoseconds except ``db_batch_rows``:

``feed_latency``   exchange event time -> received (``ts_recv - ts_event``), per venue;
                   the two clocks differ, so it includes their offset
``ingest``         received -> book snapshot published (``ts_book - ts_recv``)
``publish``        snapshot -> the frame carrying it written to a subscriber's socket
``end_to_end``     received -> written
``db_flush``       one storage batch's write (one transaction)
``db_batch_rows``  rows in that batch
``event_loop_lag`` how late a timer of the event loop fires
``bus_hop``        an edge: the ingest's snapshot -> the edge applied it (tick, NATS, decode;
                   the two machines' clocks differ, so it includes their offset)
``position_op``    a position op -> its answer: in one process or on an edge, submitted
                   by a session -> its ack or refusal queued for the client
                   (``publish.position_requests``); on a positions shard, received from
                   the bus -> its answer sent (validation, the commit of the flush
                   window, the publish)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from enum import StrEnum

from book.snapshot import BookSnapshot
from publish.metrics.hdr import DEFAULT_HIGHEST, Histogram

MAX_BATCH_ROWS = 10_000_000


class Stage(StrEnum):
    """A histogram; ``FEED_LATENCY`` has one per venue."""

    FEED_LATENCY = "feed_latency"
    INGEST = "ingest"
    PUBLISH = "publish"
    END_TO_END = "end_to_end"
    DB_FLUSH = "db_flush"
    DB_BATCH_ROWS = "db_batch_rows"
    EVENT_LOOP_LAG = "event_loop_lag"
    BUS_HOP = "bus_hop"
    POSITION_OP = "position_op"


class InstrumentTally:
    """Snapshots published for one instrument, and its venue's feed-latency histogram."""

    __slots__ = ("venue", "updates", "feed_latency")

    def __init__(self, venue: str, feed_latency: Histogram) -> None:
        self.venue = venue
        self.updates = 0
        self.feed_latency = feed_latency


class LatencyRecorder:
    """Every stage's histogram, and the hooks that fill them. One per server."""

    def __init__(self, *, window_intervals: int = 60) -> None:
        self.window_intervals = window_intervals
        self.stages: dict[Stage, Histogram] = {
            stage: Histogram(
                highest=MAX_BATCH_ROWS if stage is Stage.DB_BATCH_ROWS else DEFAULT_HIGHEST,
                window_intervals=window_intervals,
            )
            for stage in Stage
            if stage is not Stage.FEED_LATENCY
        }
        self.feed_latency: dict[str, Histogram] = {}
        """Per venue, created at the venue's first snapshot."""
        self.instruments: dict[str, InstrumentTally] = {}
        self._ingest = self.stages[Stage.INGEST]
        self._publish = self.stages[Stage.PUBLISH]
        self._end_to_end = self.stages[Stage.END_TO_END]
        self._db_flush = self.stages[Stage.DB_FLUSH]
        self._db_batch_rows = self.stages[Stage.DB_BATCH_ROWS]
        self._loop_lag = self.stages[Stage.EVENT_LOOP_LAG]
        self._bus_hop = self.stages[Stage.BUS_HOP]
        self._position_op = self.stages[Stage.POSITION_OP]

    def histograms(self) -> list[Histogram]:
        return [*self.stages.values(), *self.feed_latency.values()]

    # -- hooks ---------------------------------------------------------------------------

    def on_snapshot(self, snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        """``BookRegistry`` listener: feed latency and ingest of every published snapshot.
        About 0.6 us: a dict lookup and two histogram records."""
        tally = self.instruments.get(snapshot.instrument)
        if tally is None:
            tally = self._tally(snapshot)
        tally.updates += 1
        ts_recv = snapshot.ts_recv
        if snapshot.ts_event > 0:
            tally.feed_latency.record(ts_recv - snapshot.ts_event)
        self._ingest.record(snapshot.ts_book - ts_recv)

    def on_written(self, snapshots: Iterable[BookSnapshot], ts_written: int) -> None:
        """``Fanout`` hook, once per publish tick: the frames carrying ``snapshots`` were
        written to every subscriber ready for them by ``ts_written``. Two histogram
        records per snapshot (not per subscriber: the cost does not grow with clients)."""
        publish = self._publish.record
        end_to_end = self._end_to_end.record
        for snapshot in snapshots:
            publish(ts_written - snapshot.ts_book)
            end_to_end(ts_written - snapshot.ts_recv)

    def on_bus_hop(self, duration_ns: int) -> None:
        """``bus.follower.Follower`` hook on an edge, per applied book."""
        self._bus_hop.record(duration_ns)

    def on_position_op(self, duration_ns: int) -> None:
        """Per answered op: ``bus.position_shard.PositionShard`` on a shard,
        ``publish.position_requests.PositionRequests`` in one process or on an edge."""
        self._position_op.record(duration_ns)

    def on_flush(self, duration_ns: int, rows: int) -> None:
        """``StorageFlusher`` hook, once per committed batch."""
        self._db_flush.record(duration_ns)
        self._db_batch_rows.record(rows)

    async def sample_loop_lag(self, period: float = 0.05) -> None:
        """Forever (until cancelled): sleep ``period`` seconds and record how late the
        event loop woke up. 1/``period`` samples a second."""
        loop = asyncio.get_running_loop()
        record = self._loop_lag.record
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            record(int((loop.time() - due) * 1e9))

    def _tally(self, snapshot: BookSnapshot) -> InstrumentTally:
        venue = snapshot.venue
        histogram = self.feed_latency.get(venue)
        if histogram is None:
            histogram = self.feed_latency[venue] = Histogram(window_intervals=self.window_intervals)
        tally = self.instruments[snapshot.instrument] = InstrumentTally(venue, histogram)
        return tally
