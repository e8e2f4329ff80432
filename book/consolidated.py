"""Consolidated best bid/ask (NBBO) for a canonical symbol across venues."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from book.snapshot import BookSnapshot


class Market(StrEnum):
    """How the consolidated best bid stands to the best ask.

    ``locked``: bid == ask; ``crossed``: bid > ask (a buyer on one venue pays more than
    a seller on another asks); ``normal`` otherwise, also when a side is empty.
    """

    NORMAL = "normal"
    LOCKED = "locked"
    CROSSED = "crossed"


@dataclass(frozen=True, slots=True)
class ConsolidatedBbo:
    """Best bid and best ask over every live venue quoting ``symbol``.

    Ties on price go to the larger quantity, then the venue name first in sort order,
    so the result does not depend on the order of the venues. ``seq`` grows by one for
    every change of any field.
    """

    symbol: str
    seq: int
    ts_event: int
    ts_recv: int
    bid: int | None
    bid_qty: int | None
    bid_venue: str | None
    ask: int | None
    ask_qty: int | None
    ask_venue: str | None

    @property
    def market(self) -> Market:
        if self.bid is None or self.ask is None or self.bid < self.ask:
            return Market.NORMAL
        return Market.LOCKED if self.bid == self.ask else Market.CROSSED

    def same_quote(self, other: ConsolidatedBbo | None) -> bool:
        return other is not None and (
            self.bid,
            self.bid_qty,
            self.bid_venue,
            self.ask,
            self.ask_qty,
            self.ask_venue,
        ) == (other.bid, other.bid_qty, other.bid_venue, other.ask, other.ask_qty, other.ask_venue)


_Quote = tuple[int, int, str]
"""(price, quantity, venue) of one side of one venue's top of book."""


def _bid_rank(quote: _Quote) -> tuple[int, int, str]:
    return -quote[0], -quote[1], quote[2]


def _ask_rank(quote: _Quote) -> tuple[int, int, str]:
    return quote[0], -quote[1], quote[2]


def consolidate(
    symbol: str,
    books: list[BookSnapshot],
    previous: ConsolidatedBbo | None,
    *,
    seq_base: int = 0,
) -> ConsolidatedBbo | None:
    """NBBO of ``books`` (live snapshots of one symbol); ``None`` if unchanged. O(venues).
    The first quote of a symbol has ``seq_base + 1``."""
    best_bid: _Quote | None = None
    best_ask: _Quote | None = None
    ts_event = ts_recv = 0
    for snap in books:
        venue = snap.venue
        if snap.bid is not None and snap.bid_qty is not None:
            key = (snap.bid, snap.bid_qty, venue)
            if best_bid is None or _bid_rank(key) < _bid_rank(best_bid):
                best_bid = key
        if snap.ask is not None and snap.ask_qty is not None:
            key = (snap.ask, snap.ask_qty, venue)
            if best_ask is None or _ask_rank(key) < _ask_rank(best_ask):
                best_ask = key
        if snap.ts_recv > ts_recv:
            ts_event, ts_recv = snap.ts_event, snap.ts_recv
    if previous is None and best_bid is None and best_ask is None:
        return None  # no quote before and none now: nothing changed
    candidate = ConsolidatedBbo(
        symbol,
        (previous.seq if previous else seq_base) + 1,
        ts_event,
        ts_recv,
        *(best_bid if best_bid else (None, None, None)),
        *(best_ask if best_ask else (None, None, None)),
    )
    return None if candidate.same_quote(previous) else candidate
