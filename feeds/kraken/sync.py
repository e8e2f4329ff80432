"""Kraken book synchronisation (WS v2, and v1 recordings), exactly as Kraken documents it.

A snapshot replaces the book; an update applies absolute quantities (0 deletes). After
*every* message the book is truncated to the subscribed depth, because Kraken sends no
delete for a level pushed out of that depth (and re-sends, "republishes", a level that
comes back into it). Kraken has no sequence numbers: the CRC32 checksum of the top 10
levels per side, sent with every v2 message (v1: updates only), is the only way to see
a lost or misapplied message, so it is verified after every message. A mismatch is a
``CHECKSUM`` problem: the runner resubscribes that one instrument for a new snapshot.

The checksum formats numbers with the pair's precision (``PrecisionTable``). Until the
precision is known (configured, or learned from the ``instrument`` channel) a loaded
book is kept up to date but not published; the first message after the precision
arrives verifies it.
"""

from __future__ import annotations

from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.kraken.checksum import CHECKSUM_LEVELS, PrecisionTable, book_checksum
from feeds.sync import NOTHING, BookSync, ProblemKind, SyncProblem, SyncResult, Verdict

DEPTHS = (10, 25, 100, 500, 1000)
"""Book depths Kraken accepts in a subscription."""


class KrakenBookSync(BookSync):
    """One instrument's Kraken book at subscribed ``depth``.

    Each message costs O(k log n) for k levels, plus O(excess) truncation and the
    O(20) checksum.
    """

    def __init__(
        self,
        instrument: str,
        *,
        depth: int,
        precisions: PrecisionTable,
        capture_depth: int = 0,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        super().__init__(instrument, capture_depth=capture_depth)
        self.depth = depth
        self.precisions = precisions
        self._loaded = False

    def reset(self) -> None:
        super().reset()
        self._loaded = False

    def on_snapshot(self, event: BookSnapshotEvent, ts_recv: int) -> SyncResult:
        book = self.book
        book.load(event.bids, event.asks)
        book.truncate(self.depth)
        self._loaded = True
        return self._live_if_published(self._verified_publish(event, ts_recv))

    def on_delta(self, event: BookDeltaEvent, ts_recv: int) -> SyncResult:
        if not self._loaded:
            return NOTHING  # an update of a subscription being replaced: wait for its snapshot
        book = self.book
        book.apply(event.bids, event.asks)
        book.truncate(self.depth)
        return self._live_if_published(self._verified_publish(event, ts_recv))

    def _live_if_published(self, result: SyncResult) -> SyncResult:
        """A Kraken book is live from its first verified, published state."""
        if result.snapshot is not None:
            self.live = True
        return result

    def _verify(self, event: BookSnapshotEvent | BookDeltaEvent) -> Verdict | SyncProblem:
        checksum = event.checksum
        if checksum is None:
            return Verdict.UNCHECKED  # v1 snapshots carry none
        precision = self.precisions.get(self.instrument)
        if precision is None:
            return Verdict.CANNOT_TELL
        book = self.book
        ours = book_checksum(
            book.top_asks(CHECKSUM_LEVELS), book.top_bids(CHECKSUM_LEVELS), precision
        )
        if ours == checksum:
            return Verdict.AGREES
        return SyncProblem(
            ProblemKind.CHECKSUM,
            f"Kraken checksum {checksum}, book gives {ours} "
            f"(precision {precision.price}/{precision.qty})",
        )
