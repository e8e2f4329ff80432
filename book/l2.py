"""The live L2 book: one writer (its feed), readers only ever get ``BookSnapshot``s."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from sortedcontainers import SortedDict

from book.exceptions import CrossedBookError
from book.snapshot import BookSnapshot, Level


class L2Book:
    """Price-level book with absolute quantities; a zero quantity deletes a level.

    Both sides are ``SortedDict``s keyed by fixed-point price. Only the feed that owns
    the book mutates it; after a whole exchange message it calls ``snapshot`` and hands
    the immutable result on. ``capture_depth`` levels per side are copied into each
    snapshot (0 = best bid/ask only), so depth readers never touch the live book.
    """

    __slots__ = ("instrument", "capture_depth", "_bids", "_asks", "_seq")

    def __init__(self, instrument: str, *, capture_depth: int = 0, seq: int = 0) -> None:
        self.instrument = instrument
        self.capture_depth = capture_depth
        self._bids: SortedDict = SortedDict()
        self._asks: SortedDict = SortedDict()
        self._seq = seq

    @property
    def seq(self) -> int:
        """Version of the last published snapshot."""
        return self._seq

    def continue_from(self, seq: int) -> None:
        """Make the next snapshot's ``seq`` exceed ``seq`` (a book replacing another keeps
        its instrument's version growing)."""
        self._seq = max(self._seq, seq)

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def load(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book (an exchange snapshot). O(n log n)."""
        self._bids = SortedDict({px: qty for px, qty in bids if qty})
        self._asks = SortedDict({px: qty for px, qty in asks if qty})

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply absolute level quantities; 0 deletes, unknown deletes are ignored.

        O(k log n) for k levels. Deleting a level that is not in the book is normal on
        several venues (Binance USD-M, Coinbase) and is not an error.
        """
        side = self._bids
        for px, qty in bids:
            if qty:
                side[px] = qty
            else:
                side.pop(px, None)
        side = self._asks
        for px, qty in asks:
            if qty:
                side[px] = qty
            else:
                side.pop(px, None)

    def truncate(self, depth: int) -> None:
        """Keep only the best ``depth`` levels per side (Kraken's rule). O(excess)."""
        bids, asks = self._bids, self._asks
        while len(bids) > depth:
            bids.popitem(0)
        while len(asks) > depth:
            asks.popitem(-1)

    def best_bid(self) -> Level | None:
        return self._bids.peekitem(-1) if self._bids else None

    def best_ask(self) -> Level | None:
        return self._asks.peekitem(0) if self._asks else None

    def is_crossed(self) -> bool:
        return bool(
            self._bids and self._asks and self._bids.peekitem(-1)[0] >= self._asks.peekitem(0)[0]
        )

    def top_bids(self, depth: int) -> tuple[Level, ...]:
        """Best ``depth`` bids, descending. O(depth)."""
        bids = self._bids
        return tuple((px, bids[px]) for px in islice(reversed(bids), depth))

    def top_asks(self, depth: int) -> tuple[Level, ...]:
        """Best ``depth`` asks, ascending. O(depth)."""
        asks = self._asks
        return tuple((px, asks[px]) for px in islice(asks, depth))

    def snapshot(self, ts_event: int, ts_recv: int, ts_book: int) -> BookSnapshot:
        """Bump the version and freeze the current state. O(1) + O(capture_depth)."""
        self._seq += 1
        bids, asks = self._bids, self._asks
        bid, bid_qty = bids.peekitem(-1) if bids else (None, None)
        ask, ask_qty = asks.peekitem(0) if asks else (None, None)
        depth = self.capture_depth
        return BookSnapshot(
            self.instrument,
            self._seq,
            ts_event,
            ts_recv,
            ts_book,
            bid,
            bid_qty,
            ask,
            ask_qty,
            self.top_bids(depth) if depth else (),
            self.top_asks(depth) if depth else (),
        )

    def _check(self) -> None:
        """Assert every invariant: sorted sides, positive sizes, not crossed."""
        for side in (self._bids, self._asks):
            keys = list(side.keys())
            assert keys == sorted(keys), "side not sorted"
            assert all(qty > 0 for qty in side.values()), "non-positive quantity in book"
            assert all(px > 0 for px in keys), "non-positive price in book"
        if self.is_crossed():
            raise CrossedBookError(
                f"{self.instrument}: bid {self.best_bid()} >= ask {self.best_ask()}"
            )
