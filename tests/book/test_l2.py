"""book.l2.L2Book and the BookSnapshot values it hands out."""

from __future__ import annotations

import dataclasses

import pytest

from book.exceptions import CrossedBookError
from book.fixed import parse_fixed
from book.l2 import L2Book
from book.snapshot import BookSnapshot, Level, levels_text

INSTRUMENT = "binance:BTC-USDT"


def lv(price: str, qty: str) -> Level:
    return parse_fixed(price), parse_fixed(qty)


def px(price: str) -> int:
    return parse_fixed(price)


def sample_book(*, capture_depth: int = 0, seq: int = 0) -> L2Book:
    book = L2Book(INSTRUMENT, capture_depth=capture_depth, seq=seq)
    book.load(
        bids=[lv("100.5", "1"), lv("99", "2"), lv("100", "3")],
        asks=[lv("101", "4"), lv("102.25", "5"), lv("101.5", "6")],
    )
    return book


def test_load_sorts_both_sides() -> None:
    book = sample_book()
    assert book.top_bids(10) == (lv("100.5", "1"), lv("100", "3"), lv("99", "2"))
    assert book.top_asks(10) == (lv("101", "4"), lv("101.5", "6"), lv("102.25", "5"))
    assert len(book) == 6


def test_load_replaces_the_whole_book_and_skips_zero_levels() -> None:
    book = sample_book()
    book.load(bids=[lv("90", "1"), lv("91", "0")], asks=[lv("95", "2"), lv("96", "0")])
    assert book.top_bids(10) == (lv("90", "1"),)
    assert book.top_asks(10) == (lv("95", "2"),)
    assert len(book) == 2


def test_apply_sets_absolute_quantities() -> None:
    book = sample_book()
    book.apply(bids=[lv("100", "0.5"), lv("100.75", "7")], asks=[lv("101", "9")])
    assert book.top_bids(10) == (
        lv("100.75", "7"),
        lv("100.5", "1"),
        lv("100", "0.5"),
        lv("99", "2"),
    )
    assert book.top_asks(10) == (lv("101", "9"), lv("101.5", "6"), lv("102.25", "5"))


def test_apply_zero_deletes_a_level() -> None:
    book = sample_book()
    book.apply(bids=[lv("100.5", "0")], asks=[lv("101.5", "0")])
    assert book.top_bids(10) == (lv("100", "3"), lv("99", "2"))
    assert book.top_asks(10) == (lv("101", "4"), lv("102.25", "5"))
    assert len(book) == 4


def test_deleting_an_unknown_level_is_ignored() -> None:
    book = sample_book()
    book.apply(bids=[lv("42", "0")], asks=[lv("4242", "0")])
    assert book.top_bids(10) == (lv("100.5", "1"), lv("100", "3"), lv("99", "2"))
    assert book.top_asks(10) == (lv("101", "4"), lv("101.5", "6"), lv("102.25", "5"))


def test_apply_in_message_order_last_update_of_a_level_wins() -> None:
    book = sample_book()
    book.apply(bids=[lv("98", "1"), lv("98", "0"), lv("97", "0"), lv("97", "2")], asks=[])
    assert book.top_bids(10) == (lv("100.5", "1"), lv("100", "3"), lv("99", "2"), lv("97", "2"))


def test_truncate_keeps_the_best_levels_of_each_side() -> None:
    book = sample_book()
    book.truncate(2)
    assert book.top_bids(10) == (lv("100.5", "1"), lv("100", "3"))
    assert book.top_asks(10) == (lv("101", "4"), lv("101.5", "6"))
    book.truncate(5)
    assert len(book) == 4
    book.truncate(0)
    assert (book.top_bids(10), book.top_asks(10)) == ((), ())


def test_best_bid_and_ask() -> None:
    book = L2Book(INSTRUMENT)
    assert (book.best_bid(), book.best_ask()) == (None, None)
    book.apply(bids=[lv("100", "1")], asks=[])
    assert (book.best_bid(), book.best_ask()) == (lv("100", "1"), None)
    book = sample_book()
    assert (book.best_bid(), book.best_ask()) == (lv("100.5", "1"), lv("101", "4"))


def test_top_depth_limits() -> None:
    book = sample_book()
    assert book.top_bids(0) == ()
    assert book.top_asks(0) == ()
    assert book.top_bids(1) == (lv("100.5", "1"),)
    assert book.top_asks(2) == (lv("101", "4"), lv("101.5", "6"))


def test_clear_empties_both_sides() -> None:
    book = sample_book()
    book.clear()
    assert len(book) == 0
    assert (book.best_bid(), book.best_ask()) == (None, None)


def test_snapshot_is_the_whole_top_of_book() -> None:
    book = sample_book()
    assert book.snapshot(ts_event=10, ts_recv=20, ts_book=30) == BookSnapshot(
        INSTRUMENT, 1, 10, 20, 30, px("100.5"), px("1"), px("101"), px("4")
    )


def test_snapshot_captures_the_configured_depth() -> None:
    book = sample_book(capture_depth=2)
    assert book.snapshot(1, 2, 3) == BookSnapshot(
        INSTRUMENT,
        1,
        1,
        2,
        3,
        px("100.5"),
        px("1"),
        px("101"),
        px("4"),
        bids=(lv("100.5", "1"), lv("100", "3")),
        asks=(lv("101", "4"), lv("101.5", "6")),
    )


def test_snapshot_of_an_empty_book() -> None:
    book = L2Book(INSTRUMENT, capture_depth=5)
    assert book.snapshot(1, 2, 3) == BookSnapshot(INSTRUMENT, 1, 1, 2, 3, None, None, None, None)


def test_snapshot_seq_grows_by_one_per_call_from_the_initial_seq() -> None:
    book = sample_book(seq=41)
    assert book.seq == 41
    seqs = [book.snapshot(0, 0, 0).seq for _ in range(3)]
    assert seqs == [42, 43, 44]
    assert book.seq == 44
    book.load(bids=[], asks=[])  # a resync does not reset the version
    assert book.snapshot(0, 0, 0).seq == 45


def test_an_earlier_snapshot_does_not_change_with_the_book() -> None:
    book = sample_book(capture_depth=3)
    first = book.snapshot(1, 1, 1)
    expected = BookSnapshot(
        INSTRUMENT,
        1,
        1,
        1,
        1,
        px("100.5"),
        px("1"),
        px("101"),
        px("4"),
        bids=(lv("100.5", "1"), lv("100", "3"), lv("99", "2")),
        asks=(lv("101", "4"), lv("101.5", "6"), lv("102.25", "5")),
    )
    assert first == expected
    book.apply(bids=[lv("100.5", "0"), lv("100.6", "8")], asks=[lv("101", "1")])
    second = book.snapshot(2, 2, 2)
    book.truncate(1)
    book.load(bids=[lv("1", "1")], asks=[lv("2", "2")])
    book.clear()
    assert first == expected
    assert second.bids == (lv("100.6", "8"), lv("100", "3"), lv("99", "2"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.bid = 0  # type: ignore[misc]


def test_check_accepts_a_sound_book() -> None:
    book = sample_book()
    book._check()
    assert not book.is_crossed()


@pytest.mark.parametrize("ask", ["100.5", "100"])
def test_check_catches_a_crossed_or_locked_book(ask: str) -> None:
    book = sample_book()
    book.apply(bids=[], asks=[lv(ask, "1")])
    assert book.is_crossed()
    with pytest.raises(CrossedBookError, match="binance:BTC-USDT"):
        book._check()


def test_check_catches_a_non_positive_quantity() -> None:
    book = sample_book()
    book.apply(bids=[(px("98"), -1)], asks=[])
    with pytest.raises(AssertionError, match="non-positive quantity"):
        book._check()


def test_snapshot_names_and_top() -> None:
    snap = sample_book(capture_depth=3).snapshot(0, 0, 0)
    assert (snap.venue, snap.symbol) == ("binance", "BTC-USDT")
    assert BookSnapshot(
        "binance-usdm:BTC-USDT-PERP", 1, 0, 0, 0, None, None, None, None
    ).symbol == ("BTC-USDT-PERP")
    assert snap.top(1) == ((lv("100.5", "1"),), (lv("101", "4"),))
    assert levels_text(snap.bids) == [["100.5", "1"], ["100", "3"], ["99", "2"]]


def test_same_top_compares_only_the_best_levels() -> None:
    book = sample_book(capture_depth=3)
    first = book.snapshot(1, 1, 1)
    book.apply(bids=[lv("99", "0")], asks=[lv("102.25", "1")])
    deeper_change = book.snapshot(2, 2, 2)
    book.apply(bids=[], asks=[lv("101", "4.5")])
    top_change = book.snapshot(3, 3, 3)
    assert deeper_change.same_top(first)
    assert not top_change.same_top(deeper_change)
    assert not first.same_top(None)
