"""Coinbase Advanced Trade ``level2`` synchronisation of one product's book.

A subscription starts with a ``snapshot`` event (the whole book); ``update`` events then
carry absolute sizes ("0" removes; removing a level that is not in the book happens
and is harmless). There are no per-product sequence numbers and no checksum: loss is
seen on the connection's ``sequence_num`` (``CoinbaseParser``), after which the runner
resets this sync and resubscribes the product, and updates are ignored until the new
snapshot arrives.
"""

from __future__ import annotations

from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.sync import NOTHING, BookSync, SyncResult


class CoinbaseBookSync(BookSync):
    """One product's book. ``on_snapshot`` is O(n log n), ``on_delta`` O(k log n)."""

    def on_snapshot(self, event: BookSnapshotEvent, ts_recv: int) -> SyncResult:
        self.book.load(event.bids, event.asks)
        self.live = True
        return self._publish(event.ts_event, ts_recv)

    def on_delta(self, event: BookDeltaEvent, ts_recv: int) -> SyncResult:
        if not self.live:
            return NOTHING  # the old subscription's tail, before the new snapshot
        self.book.apply(event.bids, event.asks)
        return self._publish(event.ts_event, ts_recv)
