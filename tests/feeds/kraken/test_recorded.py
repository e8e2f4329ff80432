"""Kraken books rebuilt from real recorded traffic match every checksum Kraken sent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest

from book.fixed import format_fixed
from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.kraken.adapter import KrakenAdapter, canonical_symbol
from feeds.kraken.checksum import Precision
from feeds.kraken.sync import KrakenBookSync
from feeds.recordings import FrameKind, RecordedFrame, read_recording
from feeds.replay import Replay
from feeds.symbols import DiscoveringSymbolMap, SymbolMap
from feeds.sync import ProblemKind
from tests.recorded import KRAKEN_V1, KRAKEN_V2

BTC = "kraken:BTC-USD"
BookEvent = BookSnapshotEvent | BookDeltaEvent


def adapter(*, learn_precision: bool = False) -> KrakenAdapter:
    return KrakenAdapter(
        SymbolMap("kraken", {"BTC-USD": "BTC/USD"}), learn_precision=learn_precision
    )


@cache
def frames(path: Path) -> tuple[str, ...]:
    return tuple(frame.data for frame in read_recording(path))


@dataclass(frozen=True)
class Reference:
    """Every book message of a recording and the book after each (bids, asks)."""

    events: tuple[BookEvent, ...]
    books: tuple[tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]], ...]
    precision: Precision


@cache
def reference(path: Path) -> Reference:
    kraken = adapter()
    sync = kraken.new_sync(BTC, capture_depth=10)
    parser = kraken.new_parser()
    events: list[BookEvent] = []
    books = []
    for frame in frames(path):
        for event in parser.parse(frame):
            if not isinstance(event, BookSnapshotEvent | BookDeltaEvent):
                continue
            if isinstance(event, BookSnapshotEvent):
                result = sync.on_snapshot(event, 0)
            else:
                result = sync.on_delta(event, 0)
            assert result.problem is None and result.snapshot is not None
            events.append(event)
            books.append((sync.book.top_bids(10), sync.book.top_asks(10)))
    precision = kraken.precisions.get(BTC)
    assert precision is not None
    return Reference(tuple(events), tuple(books), precision)


CASES = [
    # path, book messages, checksums carried (v1 snapshots carry none), precision used
    (KRAKEN_V2, 510, 510, Precision(1, 8)),
    (KRAKEN_V1, 980, 979, Precision(5, 8)),
]


@pytest.mark.parametrize(("path", "messages", "checksums", "precision"), CASES)
def test_every_checksum_matches_the_rebuilt_book(
    path: Path, messages: int, checksums: int, precision: Precision
) -> None:
    """Through ``Replay``, the code path of ``marketcast replay``."""
    kraken = KrakenAdapter(DiscoveringSymbolMap("kraken", canonical_symbol), learn_precision=False)
    replay = Replay(kraken, capture_depth=10)
    published = list(replay.snapshots(read_recording(path)))
    summary = replay.summary()
    assert replay.problems == []
    assert (summary["book_messages"], summary["published"], summary["verified"]) == (
        messages,
        messages,
        checksums,
    )
    assert summary["live"] == [BTC]
    assert kraken.precisions.get(BTC) == precision
    seqs = [snapshot.seq for snapshot in published]
    assert seqs == list(range(1, messages + 1))
    ref = reference(path)
    assert len(ref.events) == messages
    assert [(s.bids, s.asks) for s in published] == list(ref.books)


def decimal_model(path: Path) -> list[tuple[list[tuple[str, str]], list[tuple[str, str]]]]:
    """The book after every message, rebuilt independently of the handler: the raw
    document read with ``Decimal``s, levels applied in order to plain dicts, each side
    cut to the best 10. Levels as exact decimal text (normalized)."""
    document = json.loads(path.read_text(), parse_float=Decimal)
    init = document["init"]
    messages = [*(init if isinstance(init, list) else [init]), *document["updates"]]
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    books = []
    for message in messages:
        if isinstance(message, dict) and message.get("channel") == "book":  # v2
            (entry,) = message["data"]
            if message["type"] == "snapshot":
                bids.clear()
                asks.clear()
            changes = [(bids, entry["bids"]), (asks, entry["asks"])]
            levels = [(side, lvl["price"], lvl["qty"]) for side, raw in changes for lvl in raw]
        elif isinstance(message, list):  # v1
            payloads = message[1:-2]
            if "as" in payloads[0]:
                changes = [(asks, payloads[0]["as"]), (bids, payloads[0]["bs"])]
            else:
                changes = [
                    (side, p[key])
                    for p in payloads
                    for key, side in (("a", asks), ("b", bids))
                    if key in p
                ]
            levels = [
                (side, Decimal(lvl[0]), Decimal(lvl[1])) for side, raw in changes for lvl in raw
            ]
        else:
            continue
        for side, price, qty in levels:
            if qty:
                side[price] = qty
            else:
                side.pop(price, None)
        for side, best_first in ((bids, True), (asks, False)):
            for price in sorted(side, reverse=not best_first)[: max(0, len(side) - 10)]:
                del side[price]
        books.append(
            (
                [
                    (str(p.normalize()), str(q.normalize()))
                    for p, q in sorted(bids.items(), reverse=True)
                ],
                [(str(p.normalize()), str(q.normalize())) for p, q in sorted(asks.items())],
            )
        )
    return books


@pytest.mark.parametrize("path", [KRAKEN_V2, KRAKEN_V1])
def test_every_book_equals_an_independent_decimal_model(path: Path) -> None:
    model = decimal_model(path)
    ours = [
        (
            [(_text(p), _text(q)) for p, q in bids],
            [(_text(p), _text(q)) for p, q in asks],
        )
        for bids, asks in reference(path).books
    ]
    assert len(ours) == len(model)
    assert ours == model


def _text(value: int) -> str:
    return str(Decimal(format_fixed(value)).normalize())


@pytest.mark.parametrize(("path", "depth"), [(KRAKEN_V2, 25), (KRAKEN_V1, 1000)])
def test_without_truncation_to_the_subscribed_depth_a_checksum_fails(
    path: Path, depth: int
) -> None:
    """Kraken deletes nothing that falls out of depth 10: a book kept deeper goes wrong."""
    kraken = KrakenAdapter(
        DiscoveringSymbolMap("kraken", canonical_symbol), depth=depth, learn_precision=False
    )
    replay = Replay(kraken)
    list(replay.snapshots(read_recording(path)))
    assert [p.problem.kind for p in replay.problems] == [ProblemKind.CHECKSUM]


@pytest.mark.parametrize(
    ("path", "caught", "harmless"), [(KRAKEN_V2, 388, 120), (KRAKEN_V1, 799, 179)]
)
def test_every_single_removed_update_is_caught_right_after_or_was_harmless(
    path: Path, caught: int, harmless: int
) -> None:
    """Remove each update in turn (all but the last: nothing follows it): the very next
    message's checksum fails, or the book after it equals Kraken's anyway (that next
    message rewrote all that was lost). Never later, never wrong and unnoticed."""
    ref = reference(path)
    kraken = adapter()
    kraken.precisions.set(BTC, ref.precision)
    outcomes = {"caught": 0, "harmless": 0}
    for removed in range(1, len(ref.events) - 1):
        sync = kraken.new_sync(BTC, capture_depth=10)
        bids, asks = ref.books[removed - 1]
        sync.on_snapshot(BookSnapshotEvent(BTC, bids, asks), 0)  # the book before it
        following = ref.events[removed + 1]
        assert isinstance(following, BookDeltaEvent)
        result = sync.on_delta(following, 0)
        if result.problem is not None:
            assert result.problem.kind is ProblemKind.CHECKSUM
            outcomes["caught"] += 1
        else:
            assert (sync.book.top_bids(10), sync.book.top_asks(10)) == ref.books[removed + 1]
            outcomes["harmless"] += 1
    assert outcomes == {"caught": caught, "harmless": harmless}


@pytest.mark.parametrize("path", [KRAKEN_V2, KRAKEN_V1])
def test_a_removed_update_replayed_end_to_end_is_one_checksum_failure(path: Path) -> None:
    """The first update in the middle of the file whose loss matters, removed from the
    recording: ``Replay`` reports a checksum failure on the next book message and the
    book stays down (the recording holds no second snapshot)."""
    ref = reference(path)
    middle = len(ref.events) // 2
    removed = next(i for i in range(middle, len(ref.events) - 1) if _matters(ref, i))
    everything = frames(path)
    parser = adapter().new_parser()
    book_frames = [
        index
        for index, frame in enumerate(everything)
        if any(isinstance(e, BookSnapshotEvent | BookDeltaEvent) for e in parser.parse(frame))
    ]
    skip = book_frames[removed]
    kept = [RecordedFrame(i, FrameKind.RECV, f) for i, f in enumerate(everything) if i != skip]
    kraken = KrakenAdapter(DiscoveringSymbolMap("kraken", canonical_symbol), learn_precision=False)
    replay = Replay(kraken)
    published = list(replay.snapshots(kept))
    assert [p.problem.kind for p in replay.problems] == [ProblemKind.CHECKSUM]
    assert len(published) == removed  # every message before the removed one, none after
    assert replay.summary()["not_live"] == [BTC]


def _matters(ref: Reference, removed: int) -> bool:
    """Whether skipping ``removed`` leaves the book different after the next message."""
    kraken = adapter()
    kraken.precisions.set(BTC, ref.precision)
    sync = KrakenBookSync(BTC, depth=10, precisions=kraken.precisions)
    bids, asks = ref.books[removed - 1]
    sync.on_snapshot(BookSnapshotEvent(BTC, bids, asks), 0)
    following = ref.events[removed + 1]
    assert isinstance(following, BookDeltaEvent)
    return sync.on_delta(following, 0).problem is not None
