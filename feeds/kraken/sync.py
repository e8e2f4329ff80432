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
from feeds.sync import NOTHING, BookSync, ProblemKind, SyncProblem, SyncResult

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
        return self._verified_publish(event.checksum, event.ts_event, ts_recv)

    def on_delta(self, event: BookDeltaEvent, ts_recv: int) -> SyncResult:
        if not self._loaded:
            return NOTHING  # an update of a subscription being replaced: wait for its snapshot
        book = self.book
        book.apply(event.bids, event.asks)
        book.truncate(self.depth)
        return self._verified_publish(event.checksum, event.ts_event, ts_recv)

    def _verified_publish(self, checksum: int | None, ts_event: int, ts_recv: int) -> SyncResult:
        if checksum is not None:
            precision = self.precisions.get(self.instrument)
            if precision is None:
                return NOTHING  # cannot verify yet; the next message will be
            book = self.book
            ours = book_checksum(
                book.top_asks(CHECKSUM_LEVELS), book.top_bids(CHECKSUM_LEVELS), precision
            )
            if ours != checksum:
                return SyncResult(
                    problem=SyncProblem(
                        ProblemKind.CHECKSUM,
                        f"Kraken checksum {checksum}, book gives {ours} "
                        f"(precision {precision.price}/{precision.qty})",
                    )
                )
            self.verified += 1
        result = self._publish(ts_event, ts_recv)
        if result.snapshot is not None:
            self.live = True
        return result
