"""Route one connection's events to its per-instrument syncs (the ``FeedSession``'s router)."""

from __future__ import annotations

from book.counters import FeedCounters
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    FeedEvent,
    MalformedEvent,
    TopOfBookEvent,
)
from feeds.sync import NOTHING, BookSync, SyncResult
from feeds.venue import VenueAdapter


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
