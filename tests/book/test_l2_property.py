"""L2Book against a naive reference book, over random load/apply/truncate sequences."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from book.exceptions import CrossedBookError
from book.l2 import L2Book
from book.snapshot import BookSnapshot, Level

CAPTURE_DEPTH = 4
DEPTHS = (0, 1, 3, 50)

# Bid and ask prices overlap on 20..30, so some sequences cross the book and most do not.
bid_prices = st.integers(min_value=1, max_value=30)
ask_prices = st.integers(min_value=20, max_value=50)
quantities = st.integers(min_value=1, max_value=10**15)
updates = st.one_of(quantities, quantities, st.just(0))  # a third of updates delete


@dataclass
class ReferenceBook:
    """Plain dicts, sorted on demand."""

    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)

    def load(self, bids: list[Level], asks: list[Level]) -> None:
        self.bids = {price: qty for price, qty in bids if qty}
        self.asks = {price: qty for price, qty in asks if qty}

    def apply(self, bids: list[Level], asks: list[Level]) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, qty in levels:
                if qty:
                    side[price] = qty
                else:
                    side.pop(price, None)

    def truncate(self, depth: int) -> None:
        self.bids = dict(self.top_bids(depth))
        self.asks = dict(self.top_asks(depth))

    def top_bids(self, depth: int) -> tuple[Level, ...]:
        return tuple(sorted(self.bids.items(), reverse=True)[:depth])

    def top_asks(self, depth: int) -> tuple[Level, ...]:
        return tuple(sorted(self.asks.items())[:depth])

    def crossed(self) -> bool:
        return bool(self.bids and self.asks and max(self.bids) >= min(self.asks))


def unique_levels(prices: st.SearchStrategy[int]) -> st.SearchStrategy[list[Level]]:
    return st.dictionaries(prices, updates, max_size=12).map(lambda d: list(d.items()))


def any_levels(prices: st.SearchStrategy[int]) -> st.SearchStrategy[list[Level]]:
    # Repeated prices in one message: the last update of a level wins.
    return st.lists(st.tuples(prices, updates), max_size=8)


Step = tuple[str, tuple[object, ...]]
"""A method name of both books and its arguments."""

steps_strategy: st.SearchStrategy[Step] = st.one_of(
    st.tuples(st.just("load"), st.tuples(unique_levels(bid_prices), unique_levels(ask_prices))),
    st.tuples(st.just("apply"), st.tuples(any_levels(bid_prices), any_levels(ask_prices))),
    st.tuples(st.just("apply"), st.tuples(any_levels(bid_prices), any_levels(ask_prices))),
    st.tuples(st.just("truncate"), st.tuples(st.integers(min_value=0, max_value=8))),
)


@settings(max_examples=150)
@given(st.lists(steps_strategy, min_size=1, max_size=30))
def test_book_matches_reference_after_every_step(steps: list[Step]) -> None:
    book = L2Book("sim:BTC-USDT", capture_depth=CAPTURE_DEPTH)
    reference = ReferenceBook()
    for seq, (method, args) in enumerate(steps, start=1):
        getattr(book, method)(*args)
        getattr(reference, method)(*args)

        if reference.crossed():
            with pytest.raises(CrossedBookError):
                book._check()
        else:
            book._check()
        for depth in DEPTHS:
            assert book.top_bids(depth) == reference.top_bids(depth)
            assert book.top_asks(depth) == reference.top_asks(depth)
        assert len(book) == len(reference.bids) + len(reference.asks)

        (bid, bid_qty), (ask, ask_qty) = (
            reference.top_bids(1)[0] if reference.bids else (None, None),
            reference.top_asks(1)[0] if reference.asks else (None, None),
        )
        assert book.snapshot(seq, seq, seq) == BookSnapshot(
            "sim:BTC-USDT",
            seq,
            seq,
            seq,
            seq,
            bid,
            bid_qty,
            ask,
            ask_qty,
            reference.top_bids(CAPTURE_DEPTH),
            reference.top_asks(CAPTURE_DEPTH),
        )
