"""Replay recorded venue traffic through the real handlers, with no network.

The same ``BookDispatcher`` and syncs as the live runner see the recorded frames in
order; REST snapshots come from the recording's HTTP frames. A problem (gap, checksum,
mismatch) resyncs that instrument as live would: its book is reset and waits for the
next snapshot in the recording.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from book.snapshot import BookSnapshot
from feeds.dispatch import BookDispatcher
from feeds.events import ConnectionGapEvent, FeedEvent
from feeds.recordings import FrameKind, RecordedFrame
from feeds.sync import ProblemKind, SyncProblem
from feeds.venue import VenueAdapter


@dataclass(frozen=True, slots=True)
class ReplayProblem:
    ts: int
    instrument: str
    problem: SyncProblem


class Replay:
    """Runs frames through one venue's handlers; ``snapshots`` yields each published book."""

    def __init__(self, adapter: VenueAdapter, *, capture_depth: int = 10) -> None:
        self.adapter = adapter
        self.capture_depth = capture_depth
        self.dispatcher = BookDispatcher(
            adapter, adapter.symbols.instruments(), capture_depth=capture_depth
        )
        self.latest: dict[str, BookSnapshot] = {}
        self.problems: list[ReplayProblem] = []
        self.refetches = 0
        self.frames = 0
        self.published = 0

    def snapshots(self, frames: Iterable[RecordedFrame]) -> Iterator[BookSnapshot]:
        """Every book published while replaying ``frames``, in order."""
        for frame in frames:
            self.frames += 1
            for event in self._events(frame):
                yield from self._handle(event, frame.ts)

    def _events(self, frame: RecordedFrame) -> list[FeedEvent]:
        if frame.kind is FrameKind.RECV:
            return self.adapter.parse(frame.data)
        if frame.kind is FrameKind.HTTP and self.adapter.rest_snapshots:
            instrument = self.adapter.snapshot_instrument(frame.url)
            if instrument is None:
                return []
            try:
                return [self.adapter.parse_snapshot(instrument, frame.data)]
            except ValueError:
                self.dispatcher.counters.malformed += 1
                return []
        return []

    def _handle(self, event: FeedEvent, ts: int) -> Iterator[BookSnapshot]:
        instrument = getattr(event, "instrument", None)
        syncs = self.dispatcher.syncs
        if isinstance(instrument, str) and instrument not in syncs:
            syncs[instrument] = self.adapter.new_sync(instrument, capture_depth=self.capture_depth)
        if isinstance(event, ConnectionGapEvent):
            for name in list(syncs):
                self._problem(ts, name, SyncProblem(ProblemKind.GAP, event.detail))
            return
        handled, result = self.dispatcher.handle(event, ts)
        if handled is None:
            return
        name = handled
        if result.snapshot is not None:
            self.latest[name] = result.snapshot
            self.published += 1
            yield result.snapshot
        elif result.problem is not None:
            self._problem(ts, name, result.problem)
        elif result.refetch:
            self.refetches += 1

    def _problem(self, ts: int, instrument: str, problem: SyncProblem) -> None:
        self.problems.append(ReplayProblem(ts, instrument, problem))
        self.dispatcher.counters.count_problem(problem)
        self.dispatcher.syncs[instrument].reset()

    def summary(self) -> dict[str, object]:
        counters = self.dispatcher.counters
        syncs = self.dispatcher.syncs
        return {
            "type": "summary",
            "venue": self.adapter.venue,
            "frames": self.frames,
            "book_messages": counters.book_messages,
            "published": self.published,
            "verified": sum(sync.verified for sync in syncs.values()),
            "gaps": counters.gaps,
            "checksum_failures": counters.checksum_failures,
            "mismatches": counters.mismatches,
            "crossed": counters.crossed,
            "resyncs": counters.resyncs,
            "refetches": self.refetches,
            "malformed": counters.malformed,
            "live": sorted(name for name, sync in syncs.items() if sync.live),
            "not_live": sorted(name for name, sync in syncs.items() if not sync.live),
        }
