"""Immutable views of a book, safe to hand to any reader (publisher, storage, HTTP, bus)."""

from __future__ import annotations

from dataclasses import dataclass

from book.fixed import format_fixed
from book.instruments import symbol_of, venue_of

Level = tuple[int, int]
"""(price, quantity) in fixed point (see ``book.fixed``)."""


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """One instrument's book after a whole exchange message was applied.

    ``seq`` is the book's version: it grows by one per applied message and never goes
    back, across resyncs too. ``bids`` (best first, descending) and ``asks`` (best
    first, ascending) hold the top ``len`` levels the book was asked to capture; the
    best bid/ask fields are always present (``None`` for an empty side).
    """

    instrument: str
    seq: int
    ts_event: int
    ts_recv: int
    ts_book: int
    bid: int | None
    bid_qty: int | None
    ask: int | None
    ask_qty: int | None
    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()

    @property
    def venue(self) -> str:
        return venue_of(self.instrument)

    @property
    def symbol(self) -> str:
        """The canonical symbol without venue (``BTC-USDT``; ``-PERP`` kept)."""
        return symbol_of(self.instrument)

    def same_top(self, other: BookSnapshot | None) -> bool:
        """True when best bid/ask and their quantities equal ``other``'s."""
        return (
            other is not None
            and self.bid == other.bid
            and self.ask == other.ask
            and self.bid_qty == other.bid_qty
            and self.ask_qty == other.ask_qty
        )

    def top(self, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The best ``depth`` levels per side (at most what was captured)."""
        return self.bids[:depth], self.asks[:depth]


def levels_text(levels: tuple[Level, ...]) -> list[list[str]]:
    """Levels as exact decimal strings, the wire form ``[["43000.1","0.5"], ...]``."""
    return [[format_fixed(px), format_fixed(qty)] for px, qty in levels]
