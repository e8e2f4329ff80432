"""OKX seqId/prevSeqId rules and the CRC32 checksum, in OKX's documented message formats.

The sequence cases are OKX's own example ("Sequence ID", ``books`` channel): snapshot
prevSeqId -1 / seqId 10; update 10 -> 15; no-update 15 -> 15; reset 15 -> 3; update
3 -> 5. Expected checksums are computed here from literal check strings with ``zlib``,
independently of ``feeds.okx.checksum``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import orjson

from book.fixed import parse_fixed
from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.okx.adapter import OkxAdapter
from feeds.okx.checksum import okx_checksum
from feeds.okx.sync import OkxBookSync
from feeds.symbols import SymbolMap
from feeds.sync import NOTHING, ProblemKind, SyncProblem, SyncResult

ADAPTER = OkxAdapter(SymbolMap("okx", {"BTC-USDT": "BTC-USDT"}))
BTC = "okx:BTC-USDT"
F = parse_fixed
Row = list[str]


def signed_crc32(check_string: str) -> int:
    crc = zlib.crc32(check_string.encode())
    return crc - 2**32 if crc >= 2**31 else crc


def frame(
    action: str,
    *,
    bids: Sequence[Row] = (),
    asks: Sequence[Row] = (),
    seq: int | None = None,
    prev: int | None = None,
    checksum: int = 0,
) -> Any:
    data: dict[str, Any] = {
        "asks": list(asks),
        "bids": list(bids),
        "ts": "1597026383085",
        "checksum": checksum,
    }
    if prev is not None:
        data["prevSeqId"] = prev
    if seq is not None:
        data["seqId"] = seq
    text = orjson.dumps(
        {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": action, "data": [data]}
    )
    (event,) = ADAPTER.new_parser().parse(text)
    assert isinstance(event, BookSnapshotEvent | BookDeltaEvent)
    return event


def feed(sync: OkxBookSync, event: BookSnapshotEvent | BookDeltaEvent) -> SyncResult:
    if isinstance(event, BookSnapshotEvent):
        result = sync.on_snapshot(event, 1)
    else:
        result = sync.on_delta(event, 1)
    sync._check()
    return result


def top(result: SyncResult) -> tuple[object, ...]:
    snap = result.snapshot
    assert snap is not None, result
    return (snap.bid, snap.bid_qty, snap.ask, snap.ask_qty)


SNAPSHOT_ROWS = {
    "bids": [["8476.97", "256", "0", "12"], ["8475.55", "101", "0", "1"]],
    "asks": [["8476.98", "415", "0", "13"], ["8477", "7", "0", "2"]],
}


def live_sync(seq: int = 10) -> OkxBookSync:
    sync = OkxBookSync(BTC, capture_depth=5)
    assert top(feed(sync, frame("snapshot", **SNAPSHOT_ROWS, seq=seq, prev=-1))) == (
        F("8476.97"),
        F("256"),
        F("8476.98"),
        F("415"),
    )
    return sync


def test_documented_chain_normal_no_update_reset_normal() -> None:
    sync = live_sync(10)
    normal = frame("update", asks=[["8476.98", "0", "0", "0"]], prev=10, seq=15)
    assert top(feed(sync, normal)) == (F("8476.97"), F("256"), F("8477"), F("7"))
    seq_before = sync.book.seq
    assert feed(sync, frame("update", prev=15, seq=15)) == NOTHING  # no update for a while
    assert sync.book.seq == seq_before
    reset = frame("update", bids=[["8476.5", "3", "0", "1"]], prev=15, seq=3)
    assert top(feed(sync, reset)) == (F("8476.97"), F("256"), F("8477"), F("7"))
    after = frame("update", bids=[["8476.97", "0", "0", "0"]], prev=3, seq=5)
    result = feed(sync, after)
    assert top(result) == (F("8476.5"), F("3"), F("8477"), F("7"))
    assert result.snapshot is not None
    assert result.snapshot.bids == ((F("8476.5"), F("3")), (F("8475.55"), F("101")))
    assert sync.last_update_id == 5
    assert sync.live


def test_a_repeat_of_the_last_seq_id_with_an_older_prev_is_a_no_op() -> None:
    sync = live_sync(10)
    assert top(feed(sync, frame("update", bids=[["8476", "1", "0", "1"]], prev=10, seq=15)))
    repeat = frame("update", bids=[["8476.9", "9", "0", "1"]], prev=12, seq=15)
    assert feed(sync, repeat) == NOTHING
    assert sync.book.best_bid() == (F("8476.97"), F("256"))
    assert top(feed(sync, frame("update", asks=[["8477", "8", "0", "2"]], prev=15, seq=16)))


def test_a_break_in_the_chain_is_a_gap() -> None:
    sync = live_sync(10)
    assert top(feed(sync, frame("update", bids=[["8476", "1", "0", "1"]], prev=10, seq=15)))
    lost = frame("update", bids=[["8476", "2", "0", "1"]], prev=18, seq=20)
    assert feed(sync, lost) == SyncResult(
        problem=SyncProblem(ProblemKind.GAP, "prevSeqId=18 seqId=20 but the last seqId was 15")
    )
    missing = frame("update", bids=[["8476", "2", "0", "1"]])
    assert live_sync(10).on_delta(missing, 1) == SyncResult(
        problem=SyncProblem(ProblemKind.GAP, "update without seqId/prevSeqId after seqId 10")
    )


def test_updates_wait_for_a_snapshot_after_a_reset() -> None:
    sync = OkxBookSync(BTC)
    early = frame("update", bids=[["8476", "1", "0", "1"]], prev=9, seq=10)
    assert feed(sync, early) == NOTHING
    sync = live_sync(10)
    sync.reset()
    assert (sync.live, sync.last_update_id, len(sync.book)) == (False, None, 0)
    assert feed(sync, frame("update", bids=[["8476", "1", "0", "1"]], prev=10, seq=11)) == NOTHING
    assert len(sync.book) == 0
    assert top(feed(sync, frame("snapshot", **SNAPSHOT_ROWS, seq=40, prev=-1)))
    assert top(feed(sync, frame("update", asks=[["8477", "1", "0", "1"]], prev=40, seq=41)))


def test_documented_check_strings() -> None:
    bids = [("3366.1", "7"), ("3366", "6")]
    asks = [("3366.8", "9"), ("3368", "8")]
    assert okx_checksum(bids, asks) == signed_crc32("3366.1:7:3366.8:9:3366:6:3368:8")
    short = [("3366.8", "9"), ("3368", "8"), ("3372", "8")]
    assert okx_checksum(bids[:1], short) == signed_crc32("3366.1:7:3366.8:9:3368:8:3372:8")
    assert okx_checksum([], []) == signed_crc32("") == 0


def test_checksums_are_verified_over_the_best_25_levels() -> None:
    bids = [[f"{100 - i}.5", f"{i + 1}", "0", "1"] for i in range(30)]
    asks = [[f"{101 + i}.5", f"{i + 2}", "0", "1"] for i in range(30)]
    pairs = zip(bids[:25], asks[:25], strict=True)
    check = ":".join(f"{b[0]}:{b[1]}:{a[0]}:{a[1]}" for b, a in pairs)
    sync = OkxBookSync(BTC)
    snapshot = frame("snapshot", bids=bids, asks=asks, seq=1, prev=-1, checksum=0)
    assert top(feed(sync, snapshot)) and sync.verified == 0  # 0: OKX sent no checksum
    checksum = signed_crc32(check.replace("76.5:25", "76.5:24"))
    update = frame("update", bids=[["76.5", "24", "0", "1"]], prev=1, seq=2, checksum=checksum)
    assert top(feed(sync, update)) and sync.verified == 1
    deep = frame("update", bids=[["70.5", "9", "0", "1"]], prev=2, seq=3, checksum=checksum)
    assert top(feed(sync, deep)) and sync.verified == 2  # level 31 is outside the checksum
    wrong = frame("update", asks=[["101.5", "5", "0", "1"]], prev=3, seq=4, checksum=checksum)
    result = feed(sync, wrong)
    assert result.problem is not None and result.problem.kind is ProblemKind.CHECKSUM
    assert result.problem.detail == (
        f"book checksum {sync.book_checksum()} but OKX sent {checksum} (seqId 4)"
    )


def test_the_exchange_strings_are_checksummed_not_reformatted_numbers() -> None:
    rows = {
        "bids": [["8476.90", "0.10", "0", "1"], ["8476", "2.500", "0", "1"]],
        "asks": [["8477.00", "1", "0", "1"]],
    }
    as_sent = signed_crc32("8476.90:0.10:8477.00:1:8476:2.500")
    reformatted = signed_crc32("8476.9:0.1:8477:1:8476:2.5")
    assert as_sent != reformatted
    sync = OkxBookSync(BTC)
    assert top(feed(sync, frame("snapshot", **rows, seq=7, prev=-1, checksum=as_sent)))
    assert sync.verified == 1
    result = feed(OkxBookSync(BTC), frame("snapshot", **rows, seq=7, prev=-1, checksum=reformatted))
    assert result.problem is not None and result.problem.kind is ProblemKind.CHECKSUM
    # A size sent again as "0.1" is what OKX checksums from then on.
    update = frame(
        "update",
        bids=[["8476.90", "0.1", "0", "1"]],
        prev=7,
        seq=8,
        checksum=signed_crc32("8476.90:0.1:8477.00:1:8476:2.500"),
    )
    assert top(feed(sync, update)) and sync.verified == 2


def test_a_crossed_book_is_a_problem() -> None:
    sync = live_sync(10)
    result = sync.on_delta(frame("update", bids=[["8478", "1", "0", "1"]], prev=10, seq=11), 1)
    assert result.problem is not None and result.problem.kind is ProblemKind.CROSSED
