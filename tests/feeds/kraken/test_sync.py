"""Kraken's checksum and book sync rules, on hand-made books."""

from __future__ import annotations

import zlib

import pytest

from book.fixed import parse_fixed
from book.snapshot import Level
from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.kraken.checksum import Precision, PrecisionTable, book_checksum, decimals
from feeds.kraken.sync import KrakenBookSync
from feeds.sync import NOTHING, ProblemKind, SyncProblem

BTC = "kraken:BTC-USD"
P18 = Precision(1, 8)


def lv(price: str, qty: str) -> Level:
    return parse_fixed(price), parse_fixed(qty)


def crc(text: str) -> int:
    return zlib.crc32(text.encode())


def test_checksum_is_krakens_documented_formatting() -> None:
    """Kraken's guide: ask 45285.2 x 0.00100000 -> "452852" + "100000"."""
    asks = [lv("45285.2", "0.001"), lv("45286.4", "1.5")]
    bids = [lv("45283.5", "0.1"), lv("0.5", "2")]
    expected = crc("452852100000" + "452864150000000" + "45283510000000" + "5200000000")
    assert book_checksum(asks, bids, P18) == expected


def test_checksum_reads_ten_levels_per_side() -> None:
    asks = [lv(f"{100 + i}.0", "1") for i in range(12)]
    bids = [lv(f"{99 - i}.0", "1") for i in range(12)]
    assert book_checksum(asks, bids, P18) == book_checksum(asks[:10], bids[:10], P18)
    assert book_checksum(asks, bids, P18) != book_checksum(asks[:9], bids[:10], P18)


def test_checksum_depends_on_the_precision() -> None:
    """v1 strings "27120.00000" carry 5 decimals where v2 uses 1: different checksums."""
    asks = [lv("27120.0", "4.28732553")]
    assert book_checksum(asks, [], Precision(5, 8)) == crc("2712000000" + "428732553")
    assert book_checksum(asks, [], P18) == crc("271200" + "428732553")
    # More decimals than the precision can never match the venue's checksum.
    assert book_checksum([lv("1.25", "1")], [], P18) == crc("12" + "100000000")


def test_precision_bounds_and_decimals() -> None:
    with pytest.raises(ValueError, match="price precision"):
        Precision(13, 8)
    with pytest.raises(ValueError, match="qty precision"):
        Precision(1, -1)
    assert (decimals("27120.00000"), decimals("4"), decimals("0.5")) == (5, 0, 1)


def checksum_of(asks: list[Level], bids: list[Level]) -> int:
    return book_checksum(asks, bids, P18)


def new_sync(depth: int = 2, precision: Precision | None = P18) -> KrakenBookSync:
    table = PrecisionTable({BTC: precision} if precision else {})
    return KrakenBookSync(BTC, depth=depth, precisions=table, capture_depth=5)


BIDS = (lv("100.0", "1"), lv("99.0", "2"))
ASKS = (lv("101.0", "1"), lv("102.0", "2"))


def snapshot(checksum: int | None = None) -> BookSnapshotEvent:
    return BookSnapshotEvent(
        BTC,
        BIDS,
        ASKS,
        checksum=checksum_of(list(ASKS), list(BIDS)) if checksum is None else checksum,
    )


def test_snapshot_and_update_truncate_to_depth_and_verify() -> None:
    sync = new_sync()
    result = sync.on_snapshot(snapshot(), 1)
    assert result.snapshot is not None and sync.live
    assert (result.snapshot.bids, result.snapshot.asks) == (BIDS, ASKS)
    # A better bid pushes 99.0 out of depth 2: Kraken sends no delete for it.
    bids_after = [lv("100.5", "3"), lv("100.0", "1")]
    update = BookDeltaEvent(
        BTC, (lv("100.5", "3"),), (), checksum=checksum_of(list(ASKS), bids_after)
    )
    result = sync.on_delta(update, 2)
    assert result.snapshot is not None
    assert result.snapshot.bids == tuple(bids_after)
    # Deleting the best ask brings back nothing by itself: Kraken republishes 103.0.
    asks_after = [lv("102.0", "2"), lv("103.0", "4")]
    update = BookDeltaEvent(
        BTC,
        (),
        (lv("101.0", "0"), lv("103.0", "4")),
        checksum=checksum_of(asks_after, bids_after),
    )
    result = sync.on_delta(update, 3)
    assert result.snapshot is not None
    assert result.snapshot.asks == tuple(asks_after)
    assert sync.verified == 3
    sync.book._check()


def test_a_checksum_mismatch_is_a_problem() -> None:
    sync = new_sync()
    sync.on_snapshot(snapshot(), 1)
    good = checksum_of([lv("101.0", "5"), lv("102.0", "2")], list(BIDS))
    result = sync.on_delta(BookDeltaEvent(BTC, (), (lv("101.0", "5"),), checksum=good + 1), 2)
    assert result.snapshot is None
    assert result.problem == SyncProblem(
        ProblemKind.CHECKSUM, f"Kraken checksum {good + 1}, book gives {good} (precision 1/8)"
    )


def test_a_bad_snapshot_checksum_is_a_problem() -> None:
    result = new_sync().on_snapshot(snapshot(checksum=12345), 1)
    assert result.problem is not None and result.problem.kind is ProblemKind.CHECKSUM


def test_updates_before_a_snapshot_or_after_a_reset_are_ignored() -> None:
    sync = new_sync()
    update = BookDeltaEvent(BTC, (lv("100.5", "3"),), (), checksum=1)
    assert sync.on_delta(update, 1) == NOTHING
    sync.on_snapshot(snapshot(), 2)
    sync.reset()
    assert not sync.live
    assert sync.on_delta(update, 3) == NOTHING
    assert len(sync.book) == 0


def test_an_unknown_precision_holds_the_book_until_a_message_can_be_verified() -> None:
    sync = new_sync(precision=None)
    assert sync.on_snapshot(snapshot(), 1) == NOTHING
    assert not sync.live
    asks_after = [lv("101.0", "7"), lv("102.0", "2")]
    update = BookDeltaEvent(BTC, (), (lv("101.0", "7"),), checksum=checksum_of(asks_after, [*BIDS]))
    assert sync.on_delta(update, 2) == NOTHING  # applied, still unverifiable
    sync.precisions.set(BTC, P18)
    asks_final = [lv("101.0", "8"), lv("102.0", "2")]
    update = BookDeltaEvent(BTC, (), (lv("101.0", "8"),), checksum=checksum_of(asks_final, [*BIDS]))
    result = sync.on_delta(update, 3)
    assert result.snapshot is not None and sync.live
    assert result.snapshot.asks == tuple(asks_final)


def test_a_v1_snapshot_without_checksum_is_published_unverified() -> None:
    sync = new_sync()
    result = sync.on_snapshot(BookSnapshotEvent(BTC, BIDS, ASKS), 1)
    assert result.snapshot is not None
    assert sync.verified == 0


def test_a_crossed_book_is_a_problem_even_with_a_matching_checksum() -> None:
    sync = new_sync()
    sync.on_snapshot(snapshot(), 1)
    bids_after = [lv("101.5", "1"), lv("100.0", "1")]
    update = BookDeltaEvent(BTC, (lv("101.5", "1"),), (), checksum=checksum_of([*ASKS], bids_after))
    result = sync.on_delta(update, 2)
    assert result.problem is not None and result.problem.kind is ProblemKind.CROSSED


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        new_sync(depth=0)
