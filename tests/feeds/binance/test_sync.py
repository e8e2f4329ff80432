"""Binance diff-depth synchronisation, rule by rule, in Binance's documented formats.

The rules are Binance's "How to manage a local order book correctly": spot drops
buffered events with ``u`` <= ``lastUpdateId``, its first kept event has ``U`` <=
``lastUpdateId`` + 1 <= ``u``, and every later one ``U`` = previous ``u`` + 1; USD-M
drops ``u`` < ``lastUpdateId``, its first kept event has ``U`` <= ``lastUpdateId`` <=
``u``, and every later one ``pu`` = previous ``u``. A bookTicker's ``u`` names a book
state whose best bid/ask it states. The last test syncs a slice of recorded traffic.
"""

from __future__ import annotations

from itertools import islice

import orjson

from book.fixed import parse_fixed
from book.snapshot import BookSnapshot
from feeds.binance.adapter import BinanceAdapter
from feeds.binance.sync import BinanceDepthSync
from feeds.events import BookDeltaEvent, BookSnapshotEvent, TopOfBookEvent
from feeds.recordings import FrameKind, read_recording
from feeds.symbols import SymbolMap
from feeds.sync import NOTHING, REFETCH, ProblemKind, SyncProblem, SyncResult
from tests.recorded import BINANCE_SPOT_CRYPTOFEED

F = parse_fixed
BTC = "binance:BTC-USDT"
SPOT = BinanceAdapter(SymbolMap("binance", {"BTC-USDT": "BTCUSDT"}))
USDM = BinanceAdapter(SymbolMap("binance", {"BTC-USDT": "BTCUSDT"}), futures=True)
Side = list[list[str]]


def snapshot(last_update_id: int, bids: Side, asks: Side) -> BookSnapshotEvent:
    body = {"lastUpdateId": last_update_id, "bids": bids, "asks": asks}
    return SPOT.parse_snapshot(BTC, orjson.dumps(body))


def depth(
    first: int, last: int, bids: Side = (), asks: Side = (), *, pu: int | None = None
) -> BookDeltaEvent:
    data: dict[str, object] = {
        "e": "depthUpdate",
        "E": 1_700_000_000_000 + last,
        "s": "BTCUSDT",
        "U": first,
        "u": last,
        "b": list(bids),
        "a": list(asks),
    }
    if pu is not None:
        data["pu"] = pu
    (event,) = (USDM if pu is not None else SPOT).new_parser().parse(orjson.dumps(data))
    assert isinstance(event, BookDeltaEvent)
    return event


def ticker(u: int, bid: str, bid_qty: str, ask: str, ask_qty: str) -> TopOfBookEvent:
    data = {"u": u, "s": "BTCUSDT", "b": bid, "B": bid_qty, "a": ask, "A": ask_qty}
    (event,) = SPOT.new_parser().parse(orjson.dumps(data))
    assert isinstance(event, TopOfBookEvent)
    return event


SNAPSHOT = snapshot(100, [["10.0", "1"], ["9.0", "2"]], [["11.0", "1"], ["12.0", "2"]])


def top(result: SyncResult) -> tuple[int | None, int | None, int | None, int | None]:
    assert result.snapshot is not None, result
    snap = result.snapshot
    return snap.bid, snap.bid_qty, snap.ask, snap.ask_qty


def live_spot() -> BinanceDepthSync:
    """A spot sync live at update id 101 (bid 10 x 1, ask 11 x 3)."""
    sync = BinanceDepthSync(BTC, futures=False)
    assert sync.on_delta(depth(95, 100, [["10.0", "5"]]), 0) == NOTHING  # buffered
    assert sync.on_snapshot(SNAPSHOT, 0) == NOTHING  # only the old event so far: waits
    result = sync.on_delta(depth(101, 101, asks=[["11.0", "3"]]), 0)
    assert top(result) == (F("10"), F("1"), F("11"), F("3"))
    return sync


def test_spot_drops_what_the_snapshot_holds_and_bridges_from_it() -> None:
    sync = BinanceDepthSync(BTC, futures=False, capture_depth=10)
    for event in (depth(90, 99), depth(95, 100, [["10.0", "5"]]), depth(100, 102, [["9.5", "1"]])):
        assert sync.on_delta(event, 0) == NOTHING  # buffered before the snapshot
    result = sync.on_snapshot(SNAPSHOT, 0)
    # 90..99 and 95..100 are in the snapshot; 100..102 bridges 101 and is applied.
    assert top(result) == (F("10"), F("1"), F("11"), F("1"))
    assert result.snapshot is not None
    assert result.snapshot.bids == ((F("10"), F("1")), (F("9.5"), F("1")), (F("9"), F("2")))
    assert (sync.live, sync.last_update_id) == (True, 102)
    sync.book._check()


def test_a_snapshot_waits_for_a_stream_event_to_prove_it() -> None:
    live_spot()


def test_a_snapshot_older_than_the_stream_is_fetched_again() -> None:
    sync = BinanceDepthSync(BTC, futures=False)
    sync.on_delta(depth(105, 107, [["10.5", "1"]]), 0)
    assert sync.on_snapshot(SNAPSHOT, 0) == REFETCH  # 101..104 would be missing
    assert not sync.live
    newer = snapshot(106, [["10.0", "1"]], [["11.0", "1"]])
    assert top(sync.on_snapshot(newer, 0)) == (F("10.5"), F("1"), F("11"), F("1"))


def test_spot_updates_chain_and_a_break_is_a_gap() -> None:
    sync = live_spot()
    assert sync.on_delta(depth(100, 101), 0) == NOTHING  # already in the book
    assert sync.on_delta(depth(90, 95), 0) == NOTHING
    assert top(sync.on_delta(depth(102, 104, [["10.0", "0"]]), 0)) == (
        F("9"),
        F("2"),
        F("11"),
        F("3"),
    )
    assert sync.on_delta(depth(106, 107), 0) == SyncResult(
        problem=SyncProblem(ProblemKind.GAP, "U=106 but previous u=104")
    )


def test_usdm_bridges_the_snapshot_id_itself_and_chains_on_pu() -> None:
    sync = BinanceDepthSync(BTC, futures=True)
    sync.on_delta(depth(90, 99, pu=89), 0)  # u < lastUpdateId: dropped
    sync.on_delta(depth(100, 103, [["10.0", "4"]], pu=99), 0)  # U <= 100 <= u: first
    assert top(sync.on_snapshot(SNAPSHOT, 0)) == (F("10"), F("4"), F("11"), F("1"))
    # pu chains; the same u again is not "already in the book" on USD-M.
    assert top(sync.on_delta(depth(104, 106, asks=[["11.0", "0"]], pu=103), 0)) == (
        F("10"),
        F("4"),
        F("12"),
        F("2"),
    )
    assert sync.on_delta(depth(108, 109, pu=107), 0) == SyncResult(
        problem=SyncProblem(ProblemKind.GAP, "pu=107 but previous u=106")
    )


def test_a_book_ticker_at_the_book_state_verifies_it() -> None:
    sync = live_spot()
    assert sync.on_top_of_book(ticker(101, "10.0", "1", "11.0", "3")) == NOTHING
    assert sync.verified == 1
    assert sync.on_top_of_book(ticker(101, "10.0", "1", "11.0", "2")) == SyncResult(
        problem=SyncProblem(
            ProblemKind.MISMATCH, "book at u=101 has 1@10 / 3@11, bookTicker says 1@10 / 2@11"
        )
    )
    assert sync.on_top_of_book(ticker(99, "1.0", "1", "2.0", "1")) == NOTHING  # older
    assert sync.verified == 1


def test_a_book_ticker_ahead_of_the_book_waits_for_that_state() -> None:
    sync = live_spot()
    assert sync.on_top_of_book(ticker(103, "10.0", "1", "10.5", "7")) == NOTHING
    assert sync.verified == 0
    # 102..102 is not the ticker's state yet; 103..103 is, and it agrees.
    assert top(sync.on_delta(depth(102, 102, [["9.0", "0"]]), 0))
    assert top(sync.on_delta(depth(103, 103, asks=[["10.5", "7"]]), 0)) == (
        F("10"),
        F("1"),
        F("10.5"),
        F("7"),
    )
    assert sync.verified == 1
    # A ticker that disagrees with the state it names holds that state back.
    sync.on_top_of_book(ticker(104, "10.0", "1", "10.5", "7"))
    assert sync.on_delta(depth(104, 104, [["10.0", "2"]]), 0) == SyncResult(
        problem=SyncProblem(
            ProblemKind.MISMATCH, "book at u=104 has 2@10 / 7@10.5, bookTicker says 1@10 / 7@10.5"
        )
    )


def test_a_crossed_book_is_a_problem_not_a_snapshot() -> None:
    sync = live_spot()
    result = sync.on_delta(depth(102, 102, [["11.5", "1"]]), 0)
    assert result.snapshot is None and result.problem is not None
    assert result.problem.kind is ProblemKind.CROSSED


def test_reset_forgets_the_book_and_waits_for_a_new_snapshot() -> None:
    sync = live_spot()
    sync.on_top_of_book(ticker(105, "10.0", "1", "11.0", "3"))
    sync.reset()
    assert (sync.live, sync.last_update_id, len(sync.book)) == (False, None, 0)
    assert sync.on_delta(depth(102, 102), 0) == NOTHING  # buffered again
    again = snapshot(101, [["10.0", "1"]], [["11.0", "1"]])
    assert top(sync.on_snapshot(again, 0)) == (F("10"), F("1"), F("11"), F("1"))
    assert sync.verified == 0


def test_a_recorded_slice_syncs_from_its_rest_snapshot() -> None:
    """NKNUSDT, 2021-10-12 (cryptofeed): the REST snapshot at 499869752 and the stream's
    first events; the first (499869750..499869752) is inside the snapshot, the second
    (499869753..499869754) bridges it and makes the first published book."""
    adapter = BinanceAdapter(SymbolMap("binance", {"NKN-USDT": "NKNUSDT"}))
    name = "binance:NKN-USDT"
    sync = BinanceDepthSync(name, futures=False)
    parser = adapter.new_parser()
    rest: BookSnapshotEvent | None = None
    deltas: list[BookDeltaEvent] = []
    published: list[tuple[int | None, BookSnapshot]] = []
    for frame in islice(read_recording(BINANCE_SPOT_CRYPTOFEED), 40):
        if frame.kind is FrameKind.HTTP and adapter.snapshot_instrument(frame.url) == name:
            rest = adapter.parse_snapshot(name, frame.data)
            result = sync.on_snapshot(rest, frame.ts)
        elif frame.kind is FrameKind.RECV:
            (event,) = parser.parse(frame.data)
            if not isinstance(event, BookDeltaEvent):
                continue
            deltas.append(event)
            result = sync.on_delta(event, frame.ts)
        else:
            continue
        assert result.problem is None
        if result.snapshot is not None:
            published.append((sync.last_update_id, result.snapshot))
    assert rest is not None and rest.update_id == 499_869_752
    assert [d.last_id for d in deltas[:2]] == [499_869_752, 499_869_754]
    # The first published book, computed here: the snapshot plus the second update.
    book = {"bid": dict(rest.bids), "ask": dict(rest.asks)}
    for side, levels in (("bid", deltas[1].bids), ("ask", deltas[1].asks)):
        for px, qty in levels:
            book[side][px] = qty
    expected_bid = max((px, qty) for px, qty in book["bid"].items() if qty)
    expected_ask = min((px, qty) for px, qty in book["ask"].items() if qty)
    (first_id, first), *_ = published
    assert first_id == 499_869_754
    assert (first.bid, first.bid_qty, first.ask, first.ask_qty) == (*expected_bid, *expected_ask)
    assert len(published) == len([d for d in deltas if d.last_id > 499_869_752])
    sync.book._check()
