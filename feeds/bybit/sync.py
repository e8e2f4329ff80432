"""Bybit v5 ``orderbook.{depth}.{symbol}`` synchronisation of one topic's book.

Bybit's rules: a subscription starts with a ``snapshot``; a snapshot replaces the book
whenever one arrives (Bybit may resend one at any time, and after a service restart
sends one with ``u`` = 1); each ``delta`` must have ``u`` = previous ``u`` + 1, else a
message was lost (a gap: the runner resubscribes the topic). Sizes are absolute, 0
deletes. Deltas before the first snapshot (the tail of an old subscription) are ignored.
"""

from __future__ import annotations

from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.sync import NOTHING, BookSync, ProblemKind, SyncProblem, SyncResult


class BybitBookSync(BookSync):
    """One topic's book (``last_update_id``: ``u`` of the last applied message).
    ``on_snapshot`` is O(n log n), ``on_delta`` O(k log n)."""

    def on_snapshot(self, event: BookSnapshotEvent, ts_recv: int) -> SyncResult:
        if event.update_id is None:
            raise ValueError("a Bybit snapshot needs u")
        self.book.load(event.bids, event.asks)
        self.last_update_id = event.update_id
        self.live = True
        return self._publish(event.ts_event, ts_recv)

    def on_delta(self, event: BookDeltaEvent, ts_recv: int) -> SyncResult:
        last = self.last_update_id
        if not self.live or last is None:
            return NOTHING
        if event.last_id != last + 1:
            return SyncResult(
                problem=SyncProblem(ProblemKind.GAP, f"u={event.last_id} but previous u={last}")
            )
        self.book.apply(event.bids, event.asks)
        self.last_update_id = event.last_id
        return self._publish(event.ts_event, ts_recv)
