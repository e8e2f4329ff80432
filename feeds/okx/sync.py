"""OKX v5 ``books`` synchronisation: in-band snapshot, seqId chain, CRC32 checksum.

OKX's rules ("Sequence ID", ``books`` channel): a snapshot has ``prevSeqId`` -1; every
update's ``prevSeqId`` equals the ``seqId`` of the message before it. Exceptions: with
no change for a while OKX sends an update with empty sides and ``prevSeqId`` ==
``seqId`` == the last ``seqId``; after maintenance ``seqId`` may restart lower than
``prevSeqId`` (``prevSeqId`` still chains). An update repeating the last ``seqId`` with
an older ``prevSeqId`` changes nothing and is ignored. Anything else is a gap, and the
instrument is resubscribed for a new snapshot.

Whenever a message carries a non-zero ``checksum`` (OKX sends 0 since 2026; recordings
from before 2022-06 have checksums and no seqId), the CRC32 of the best 25 levels is
compared with it, computed over the exchange's own strings, which this sync keeps per
level beside the fixed-point book.
"""

from __future__ import annotations

from book.snapshot import Level
from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.okx.checksum import CHECKSUM_DEPTH, TextLevel, okx_checksum
from feeds.okx.parser import OkxDeltaEvent, OkxSnapshotEvent
from feeds.sync import NOTHING, BookSync, ProblemKind, SyncProblem, SyncResult, Verdict


class OkxBookSync(BookSync):
    """One instrument's OKX book. Each call is O(levels in the event), plus O(25) for a
    checksum; the level strings cost one dict write per level."""

    def __init__(self, instrument: str, *, capture_depth: int = 0) -> None:
        super().__init__(instrument, capture_depth=capture_depth)
        # price -> (price text, size text) as OKX last sent them, for checksums
        self._bid_text: dict[int, TextLevel] = {}
        self._ask_text: dict[int, TextLevel] = {}

    def reset(self) -> None:
        super().reset()
        self._bid_text.clear()
        self._ask_text.clear()

    def on_snapshot(self, event: BookSnapshotEvent, ts_recv: int) -> SyncResult:
        if not isinstance(event, OkxSnapshotEvent):
            raise TypeError("OKX books need OkxSnapshotEvent (level strings for checksums)")
        self.book.load(event.bids, event.asks)
        self._bid_text = _texts(event.bids, event.bid_text)
        self._ask_text = _texts(event.asks, event.ask_text)
        self.last_update_id = event.update_id
        self.live = True
        return self._verified_publish(event, ts_recv)

    def on_delta(self, event: BookDeltaEvent, ts_recv: int) -> SyncResult:
        if not isinstance(event, OkxDeltaEvent):
            raise TypeError("OKX books need OkxDeltaEvent (level strings for checksums)")
        if not self.live:
            return NOTHING  # the old subscription's updates, before the new snapshot
        seq, prev, last = event.last_id, event.prev_id, self.last_update_id
        if last is not None:
            if seq is None or prev is None:
                return _gap(f"update without seqId/prevSeqId after seqId {last}")
            if prev != last:
                if seq == last and prev < last:
                    return NOTHING  # repeats the last state: a no-op heartbeat
                return _gap(f"prevSeqId={prev} seqId={seq} but the last seqId was {last}")
        self.last_update_id = seq
        if not event.bids and not event.asks:
            # OKX's keepalive for a quiet book: nothing changed, nothing to publish.
            held = self._held(self._verify(event))
            return NOTHING if held is None else held
        self.book.apply(event.bids, event.asks)
        _update(self._bid_text, event.bids, event.bid_text)
        _update(self._ask_text, event.asks, event.ask_text)
        return self._verified_publish(event, ts_recv)

    def _verify(self, event: BookSnapshotEvent | BookDeltaEvent) -> Verdict | SyncProblem:
        """Compare OKX's checksum with the book's; 0 or absent means OKX sent none."""
        checksum = event.checksum
        if not checksum:
            return Verdict.UNCHECKED
        ours = self.book_checksum()
        if ours == checksum:
            return Verdict.AGREES
        return SyncProblem(
            ProblemKind.CHECKSUM,
            f"book checksum {ours} but OKX sent {checksum} (seqId {self.last_update_id})",
        )

    def book_checksum(self) -> int:
        """The OKX checksum of the current book, from the exchange's strings. O(25)."""
        bid_text, ask_text = self._bid_text, self._ask_text
        book = self.book
        return okx_checksum(
            [bid_text[px] for px, _ in book.top_bids(CHECKSUM_DEPTH)],
            [ask_text[px] for px, _ in book.top_asks(CHECKSUM_DEPTH)],
        )

    def _check(self) -> None:
        """Assert the book's invariants and that every level has its strings."""
        self.book._check()
        book = self.book
        depth = len(book)
        assert self._bid_text.keys() == {px for px, _ in book.top_bids(depth)}, "bid texts"
        assert self._ask_text.keys() == {px for px, _ in book.top_asks(depth)}, "ask texts"


def _texts(levels: tuple[Level, ...], texts: tuple[TextLevel, ...]) -> dict[int, TextLevel]:
    return {px: text for (px, qty), text in zip(levels, texts, strict=True) if qty}


def _update(
    side: dict[int, TextLevel], levels: tuple[Level, ...], texts: tuple[TextLevel, ...]
) -> None:
    for (px, qty), text in zip(levels, texts, strict=True):
        if qty:
            side[px] = text
        else:
            side.pop(px, None)


def _gap(detail: str) -> SyncResult:
    return SyncResult(problem=SyncProblem(ProblemKind.GAP, detail))
