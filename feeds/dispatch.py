"""Route one venue's events to its per-instrument syncs; shared by the runner and replay."""

from __future__ import annotations

from dataclasses import dataclass, field

from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    FeedEvent,
    MalformedEvent,
    TopOfBookEvent,
)
from feeds.sync import NOTHING, BookSync, ProblemKind, SyncProblem, SyncResult
from feeds.venue import VenueAdapter


@dataclass(slots=True)
class FeedCounters:
    """Plain counters of one venue's traffic (read by metrics)."""

    frames: int = 0
    book_messages: int = 0
    malformed: int = 0
    venue_errors: int = 0
    gaps: int = 0
    checksum_failures: int = 0
    mismatches: int = 0
    crossed: int = 0
    resyncs: int = 0
    top_of_book_checked: int = 0
    internal_errors: int = 0
    by_instrument: dict[str, int] = field(default_factory=dict)

    def count_problem(self, problem: SyncProblem) -> None:
        """Count a problem that makes an instrument resync."""
        self.resyncs += 1
        if problem.kind is ProblemKind.GAP:
            self.gaps += 1
        elif problem.kind is ProblemKind.CHECKSUM:
            self.checksum_failures += 1
        elif problem.kind is ProblemKind.MISMATCH:
            self.mismatches += 1
        elif problem.kind is ProblemKind.CROSSED:
            self.crossed += 1


class BookDispatcher:
    """Owns the ``BookSync`` of every instrument of one venue connection.

    ``handle`` is O(levels in the event) plus a dict lookup.
    """

    def __init__(
        self,
        adapter: VenueAdapter,
        instruments: list[str],
        *,
        capture_depth: int = 0,
        counters: FeedCounters | None = None,
    ):
        self.adapter = adapter
        self.syncs: dict[str, BookSync] = {
            name: adapter.new_sync(name, capture_depth=capture_depth) for name in instruments
        }
        self.counters = counters if counters is not None else FeedCounters()

    def handle(self, event: FeedEvent, ts_recv: int) -> tuple[str | None, SyncResult]:
        """Apply one event; returns the instrument it concerned and what happened."""
        if isinstance(event, BookDeltaEvent):
            sync = self.syncs.get(event.instrument)
            if sync is None:
                return None, NOTHING
            self._count(event.instrument)
            return event.instrument, sync.on_delta(event, ts_recv)
        if isinstance(event, BookSnapshotEvent):
            sync = self.syncs.get(event.instrument)
            if sync is None:
                return None, NOTHING
            self._count(event.instrument)
            return event.instrument, sync.on_snapshot(event, ts_recv)
        if isinstance(event, TopOfBookEvent):
            sync = self.syncs.get(event.instrument)
            if sync is None:
                return None, NOTHING
            self.counters.top_of_book_checked += 1
            return event.instrument, sync.on_top_of_book(event)
        if isinstance(event, MalformedEvent):
            self.counters.malformed += 1
        return None, NOTHING

    def _count(self, instrument: str) -> None:
        counters = self.counters
        counters.book_messages += 1
        counters.by_instrument[instrument] = counters.by_instrument.get(instrument, 0) + 1
