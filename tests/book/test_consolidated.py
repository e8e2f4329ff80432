"""book.consolidated: the NBBO of one canonical symbol across venues."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable

from hypothesis import given
from hypothesis import strategies as st

from book.consolidated import ConsolidatedBbo, consolidate
from book.snapshot import BookSnapshot

SYMBOL = "BTC-USDT"


def snap(
    venue: str,
    bid: int | None,
    bid_qty: int | None,
    ask: int | None,
    ask_qty: int | None,
    *,
    ts_event: int = 0,
    ts_recv: int = 0,
    seq: int = 1,
) -> BookSnapshot:
    return BookSnapshot(
        f"{venue}:{SYMBOL}", seq, ts_event, ts_recv, ts_recv, bid, bid_qty, ask, ask_qty
    )


def test_best_bid_and_best_ask_come_from_different_venues() -> None:
    books = [
        snap("binance", 100, 5, 104, 5, ts_event=1, ts_recv=11),
        snap("kraken", 102, 1, 105, 2, ts_event=3, ts_recv=13),
        snap("okx", 101, 9, 103, 4, ts_event=2, ts_recv=12),
    ]
    assert consolidate(SYMBOL, books, None) == ConsolidatedBbo(
        SYMBOL, 1, 3, 13, 102, 1, "kraken", 103, 4, "okx"
    )


def test_equal_prices_go_to_the_larger_quantity() -> None:
    books = [
        snap("binance", 100, 5, 101, 2),
        snap("coinbase", 100, 7, 101, 9),
        snap("kraken", 100, 6, 101, 3),
    ]
    assert consolidate(SYMBOL, books, None) == ConsolidatedBbo(
        SYMBOL, 1, 0, 0, 100, 7, "coinbase", 101, 9, "coinbase"
    )


def test_equal_price_and_quantity_go_to_the_first_venue_name_in_any_order() -> None:
    books = [
        snap("okx", 100, 5, 101, 2),
        snap("bybit", 100, 5, 101, 2),
        snap("kraken", 100, 5, 101, 2),
    ]
    expected = ConsolidatedBbo(SYMBOL, 1, 0, 0, 100, 5, "bybit", 101, 2, "bybit")
    for order in itertools.permutations(books):
        assert consolidate(SYMBOL, list(order), None) == expected


def test_an_empty_side_is_skipped() -> None:
    books = [snap("binance", None, None, 101, 2), snap("kraken", 99, 1, None, None)]
    assert consolidate(SYMBOL, books, None) == ConsolidatedBbo(
        SYMBOL, 1, 0, 0, 99, 1, "kraken", 101, 2, "binance"
    )


def test_none_when_the_quote_is_unchanged() -> None:
    first = consolidate(SYMBOL, [snap("binance", 100, 5, 101, 2, ts_recv=1)], None)
    assert first == ConsolidatedBbo(SYMBOL, 1, 0, 1, 100, 5, "binance", 101, 2, "binance")
    # Newer timestamps and a losing venue change nothing a subscriber sees.
    later = [snap("binance", 100, 5, 101, 2, ts_recv=5), snap("okx", 99, 1, 102, 1, ts_recv=6)]
    assert consolidate(SYMBOL, later, first) is None


def test_no_quote_before_and_none_now_is_unchanged() -> None:
    assert consolidate(SYMBOL, [], None) is None
    assert consolidate(SYMBOL, [snap("binance", None, None, None, None)], None) is None


def test_seq_grows_by_one_per_change() -> None:
    quotes = [(100, 5), (100, 6), (101, 6), (101, 6), (100, 5)]
    seen: list[ConsolidatedBbo] = []
    previous: ConsolidatedBbo | None = None
    for ts, (bid, bid_qty) in enumerate(quotes, start=1):
        result = consolidate(SYMBOL, [snap("binance", bid, bid_qty, 110, 1, ts_recv=ts)], previous)
        if result is not None:
            seen.append(result)
            previous = result
    assert seen == [
        ConsolidatedBbo(SYMBOL, 1, 0, 1, 100, 5, "binance", 110, 1, "binance"),
        ConsolidatedBbo(SYMBOL, 2, 0, 2, 100, 6, "binance", 110, 1, "binance"),
        ConsolidatedBbo(SYMBOL, 3, 0, 3, 101, 6, "binance", 110, 1, "binance"),
        ConsolidatedBbo(SYMBOL, 4, 0, 5, 100, 5, "binance", 110, 1, "binance"),
    ]


def test_losing_every_quote_is_a_change() -> None:
    previous = ConsolidatedBbo(SYMBOL, 7, 1, 1, 100, 5, "binance", 101, 2, "binance")
    assert consolidate(SYMBOL, [], previous) == ConsolidatedBbo(
        SYMBOL, 8, 0, 0, None, None, None, None, None, None
    )


def test_same_quote_ignores_seq_and_timestamps() -> None:
    quote = ConsolidatedBbo(SYMBOL, 1, 1, 1, 100, 5, "binance", 101, 2, "okx")
    assert quote.same_quote(ConsolidatedBbo(SYMBOL, 9, 8, 8, 100, 5, "binance", 101, 2, "okx"))
    assert not quote.same_quote(ConsolidatedBbo(SYMBOL, 1, 1, 1, 100, 5, "kraken", 101, 2, "okx"))
    assert not quote.same_quote(ConsolidatedBbo(SYMBOL, 1, 1, 1, 100, 5, "binance", 101, 3, "okx"))
    assert not quote.same_quote(None)


def best_quote(
    quotes: list[tuple[int, int, str]], best_price: Callable[[Iterable[int]], int]
) -> tuple[int | None, int | None, str | None]:
    """The spec, spelled out: best price, then the largest quantity, then the first venue."""
    if not quotes:
        return None, None, None
    price = best_price(p for p, _, _ in quotes)
    qty = max(q for p, q, _ in quotes if p == price)
    return price, qty, min(v for p, q, v in quotes if (p, q) == (price, qty))


VENUES = ("binance", "bybit", "coinbase", "kraken", "okx")
sides = st.one_of(st.none(), st.tuples(st.integers(min_value=1, max_value=4), st.integers(1, 3)))


@given(
    st.lists(st.tuples(st.sampled_from(VENUES), sides, sides), unique_by=lambda b: b[0]),
    st.randoms(use_true_random=False),
)
def test_nbbo_is_the_ranked_best_of_each_side_in_any_order(
    quotes: list[tuple[str, tuple[int, int] | None, tuple[int, int] | None]],
    rng: random.Random,
) -> None:
    books = [
        snap(venue, *(bid or (None, None)), *(ask or (None, None))) for venue, bid, ask in quotes
    ]
    expected_bid = best_quote([(*bid, venue) for venue, bid, _ in quotes if bid], max)
    expected_ask = best_quote([(*ask, venue) for venue, _, ask in quotes if ask], min)
    previous = ConsolidatedBbo(SYMBOL, 1, 0, 0, 0, 0, "none", 0, 0, "none")
    rng.shuffle(books)
    assert consolidate(SYMBOL, books, previous) == ConsolidatedBbo(
        SYMBOL, 2, 0, 0, *expected_bid, *expected_ask
    )


@given(st.integers(1, 200), st.integers(1, 200))
def test_market_compares_the_consolidated_bid_with_the_ask(bid: int, ask: int) -> None:
    nbbo = consolidate(SYMBOL, [snap("binance", bid, 1, 300, 1), snap("okx", 0, 1, ask, 1)], None)
    assert nbbo is not None
    expected = "crossed" if bid > ask else "locked" if bid == ask else "normal"
    assert nbbo.market == expected


def test_market_is_normal_when_a_side_is_empty() -> None:
    nbbo = consolidate(SYMBOL, [snap("binance", 100, 1, None, None)], None)
    assert nbbo is not None and nbbo.market == "normal"
