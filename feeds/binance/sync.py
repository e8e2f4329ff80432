"""Binance diff-depth synchronisation (spot and USD-M), exactly as Binance documents it.

Spot: buffer stream events; take a REST snapshot (kept waiting until a stream event
shows whether it is older than the stream); drop buffered events with
``u <= lastUpdateId``; the first kept event must have ``U <= lastUpdateId + 1 <= u``;
after that every event must have ``U == previous u + 1`` (``u`` below the book id is old
and ignored). USD-M: drop ``u < lastUpdateId``; the first kept event must have
``U <= lastUpdateId <= u``; after that every event's ``pu`` must equal the previous ``u``.
A snapshot older than the first buffered event is refetched. Any break is a gap.
"""

from __future__ import annotations

from collections import deque

from book.fixed import format_fixed
from feeds.events import BookDeltaEvent, BookSnapshotEvent, TopOfBookEvent
from feeds.sync import (
    NOTHING,
    REFETCH,
    BookSync,
    ProblemKind,
    SyncProblem,
    SyncResult,
    Verdict,
)

_MAX_TICKERS_AHEAD = 64


class BinanceDepthSync(BookSync):
    """One instrument's Binance book. Each call is O(levels in the event)."""

    def __init__(
        self,
        instrument: str,
        *,
        futures: bool,
        capture_depth: int = 0,
        max_buffered: int = 10_000,
    ) -> None:
        super().__init__(instrument, capture_depth=capture_depth)
        self.futures = futures
        self._buffer: deque[BookDeltaEvent] = deque(maxlen=max_buffered)
        self._bridging = False
        self._waiting_snapshot: BookSnapshotEvent | None = None
        # bookTickers run ahead of the 100 ms depth stream: hold them until the book
        # reaches their update id, then compare.
        self._tickers_ahead: dict[int, TopOfBookEvent] = {}

    def reset(self) -> None:
        super().reset()
        self._buffer.clear()
        self._bridging = False
        self._waiting_snapshot = None
        self._tickers_ahead.clear()

    def on_snapshot(self, event: BookSnapshotEvent, ts_recv: int) -> SyncResult:
        if event.update_id is None:
            raise ValueError("a Binance snapshot needs lastUpdateId")
        pending = [e for e in self._buffer if not self._before(e, event.update_id)]
        self._buffer.clear()
        if not pending:
            # Only a stream event can prove the snapshot is not older than the stream.
            self._waiting_snapshot = event
            return NOTHING
        return self._start(event, pending, ts_recv)

    def on_delta(self, event: BookDeltaEvent, ts_recv: int) -> SyncResult:
        if not self.live:
            waiting = self._waiting_snapshot
            if waiting is None:
                self._buffer.append(event)
                return NOTHING
            assert waiting.update_id is not None
            if self._before(event, waiting.update_id):
                return NOTHING
            self._waiting_snapshot = None
            return self._start(waiting, [event], ts_recv)
        last_id, book_id = event.last_id, self.last_update_id
        if last_id is None or book_id is None:
            return SyncResult(problem=SyncProblem(ProblemKind.GAP, "depth update without ids"))
        if last_id < book_id or (last_id == book_id and not self.futures):
            return NOTHING  # already contained in the book
        problem = self._check_sequence(event)
        if problem is not None:
            return SyncResult(problem=problem)
        self._apply(event)
        return self._verified_publish(event, ts_recv)

    def _before(self, event: BookDeltaEvent, snapshot_id: int) -> bool:
        """Spot drops events with ``u <= lastUpdateId``, USD-M only ``u < lastUpdateId``."""
        assert event.last_id is not None
        return event.last_id <= snapshot_id if not self.futures else event.last_id < snapshot_id

    def _start(
        self, snapshot: BookSnapshotEvent, pending: list[BookDeltaEvent], ts_recv: int
    ) -> SyncResult:
        """Load ``snapshot`` and apply ``pending`` (the stream events after it)."""
        assert snapshot.update_id is not None
        if not self._bridges(pending[0], snapshot.update_id):
            self._buffer.extend(pending)
            return REFETCH  # the snapshot is older than the stream: fetch another
        self.book.load(snapshot.bids, snapshot.asks)
        self.last_update_id = snapshot.update_id
        self._bridging = True
        self.live = True
        for delta in pending:
            problem = self._check_sequence(delta)
            if problem is not None:
                return SyncResult(problem=problem)
            self._apply(delta)
        return self._verified_publish(pending[-1], ts_recv)

    def on_top_of_book(self, event: TopOfBookEvent) -> SyncResult:
        """bookTicker ``u`` names a book state: when the book is at that state, the tops
        must be equal. A ticker ahead of the book waits (bounded) for the book."""
        book_id = self.last_update_id
        if not self.live or event.update_id is None or book_id is None:
            return NOTHING
        if event.update_id > book_id:
            if len(self._tickers_ahead) >= _MAX_TICKERS_AHEAD:
                self._tickers_ahead.pop(next(iter(self._tickers_ahead)))
            self._tickers_ahead[event.update_id] = event
            return NOTHING
        if event.update_id < book_id or self._bridging:
            return NOTHING
        held = self._held(self._compare(event))
        return NOTHING if held is None else held

    def _verify(self, event: BookSnapshotEvent | BookDeltaEvent) -> Verdict | SyncProblem:
        """The bookTicker that was waiting for this book state, if one was."""
        verdict: Verdict | SyncProblem = Verdict.UNCHECKED
        tickers = self._tickers_ahead
        if tickers:
            last = self.last_update_id
            assert last is not None
            ticker = tickers.pop(last, None)
            if ticker is not None:
                verdict = self._compare(ticker)
            if len(tickers) > _MAX_TICKERS_AHEAD // 2:
                self._tickers_ahead = {u: t for u, t in tickers.items() if u > last}
        return verdict

    def _compare(self, event: TopOfBookEvent) -> Verdict | SyncProblem:
        book = self.book
        ours = (book.best_bid(), book.best_ask())
        theirs = ((event.bid, event.bid_qty), (event.ask, event.ask_qty))
        if ours == theirs:
            return Verdict.AGREES
        return SyncProblem(
            ProblemKind.MISMATCH,
            f"book at u={self.last_update_id} has {_fmt(ours)}, bookTicker says {_fmt(theirs)}",
        )

    def _bridges(self, first: BookDeltaEvent, snapshot_id: int) -> bool:
        assert first.first_id is not None and first.last_id is not None
        target = snapshot_id if self.futures else snapshot_id + 1
        return first.first_id <= target <= first.last_id

    def _check_sequence(self, event: BookDeltaEvent) -> SyncProblem | None:
        last = self.last_update_id
        assert last is not None and event.first_id is not None and event.last_id is not None
        if self._bridging:
            if self._bridges(event, last):
                return None
            return SyncProblem(
                ProblemKind.GAP,
                f"first event U={event.first_id} u={event.last_id} does not bridge snapshot {last}",
            )
        if self.futures:
            if event.prev_id == last:
                return None
            return SyncProblem(ProblemKind.GAP, f"pu={event.prev_id} but previous u={last}")
        if event.first_id <= last + 1:
            return None
        return SyncProblem(ProblemKind.GAP, f"U={event.first_id} but previous u={last}")

    def _apply(self, event: BookDeltaEvent) -> None:
        self.book.apply(event.bids, event.asks)
        self.last_update_id = event.last_id
        self._bridging = False


def _fmt(top: tuple[tuple[int, int] | None, tuple[int, int] | None]) -> str:
    return " / ".join(
        "-" if level is None else f"{format_fixed(level[1])}@{format_fixed(level[0])}"
        for level in top
    )
