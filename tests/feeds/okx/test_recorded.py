"""OKX books rebuilt from real recorded traffic match every OKX checksum.

The recording (cryptofeed sample data, 2022-05-13, 11 s) predates seqId/prevSeqId, so
the checksum is the only check: all 290 book messages must verify, and removing any one
update must be caught, on that instrument only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from functools import cache

import pytest

from book.fixed import format_fixed
from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.okx.adapter import OkxAdapter, okx_canonical
from feeds.okx.sync import OkxBookSync
from feeds.recordings import FrameKind, RecordedFrame, read_recording
from feeds.replay import Replay
from feeds.symbols import SymbolMap
from feeds.sync import ProblemKind
from tests.recorded import OKX_CRYPTOFEED

INST_IDS = ["BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT"]
FUTURE, SWAP, SPOT = (f"okx:{okx_canonical(inst_id)}" for inst_id in INST_IDS)


@cache
def frames() -> tuple[RecordedFrame, ...]:
    return tuple(read_recording(OKX_CRYPTOFEED))


def adapter() -> OkxAdapter:
    return OkxAdapter(SymbolMap("okx", {okx_canonical(i): i for i in INST_IDS}))


def replay(recorded: tuple[RecordedFrame, ...]) -> Replay:
    run = Replay(adapter(), capture_depth=3)
    for published in run.snapshots(recorded):
        sync = run.session.syncs[published.instrument]
        assert isinstance(sync, OkxBookSync)
        sync._check()
    return run


@cache
def full_replay() -> Replay:
    return replay(frames())


def book_messages() -> list[tuple[int, BookSnapshotEvent | BookDeltaEvent]]:
    parse = adapter().new_parser().parse
    found = []
    for index, frame in enumerate(frames()):
        if frame.kind is FrameKind.RECV:
            for event in parse(frame.data):
                if isinstance(event, BookSnapshotEvent | BookDeltaEvent):
                    found.append((index, event))
    return found


def test_the_recording_holds_three_snapshots_and_287_checksummed_updates() -> None:
    messages = book_messages()
    kinds = Counter((type(event).__name__, event.instrument) for _, event in messages)
    assert kinds == {
        ("OkxSnapshotEvent", FUTURE): 1,
        ("OkxSnapshotEvent", SWAP): 1,
        ("OkxSnapshotEvent", SPOT): 1,
        ("OkxDeltaEvent", FUTURE): 98,
        ("OkxDeltaEvent", SWAP): 92,
        ("OkxDeltaEvent", SPOT): 97,
    }
    assert all(event.checksum for _, event in messages)
    assert all(
        event.last_id is None and event.prev_id is None
        for _, event in messages
        if isinstance(event, BookDeltaEvent)
    )


def test_every_checksum_matches_the_rebuilt_book() -> None:
    run = full_replay()
    assert run.problems == []
    syncs = run.session.syncs
    assert {name: sync.verified for name, sync in syncs.items()} == {
        FUTURE: 99,
        SWAP: 93,
        SPOT: 98,
    }
    assert run.published == 290
    assert {name: len(sync.book) for name, sync in syncs.items()} == {
        FUTURE: 136,
        SWAP: 243,
        SPOT: 800,
    }
    final = {
        name: [
            (format_fixed(px), format_fixed(qty)) for px, qty in (*snap.bids[:2], *snap.asks[:2])
        ]
        for name, snap in run.latest.items()
    }
    assert final == {
        FUTURE: [("30229.4", "2"), ("30228.1", "2"), ("30238.8", "3"), ("30240.1", "2")],
        SWAP: [("5.137", "20"), ("5.136", "452"), ("5.145", "50"), ("5.147", "211")],
        SPOT: [
            ("30236.1", "0.18050747"),
            ("30234", "0.052"),
            ("30236.2", "0.001"),
            ("30243.9", "0.0002"),
        ],
    }


@pytest.mark.parametrize("instrument", [FUTURE, SWAP, SPOT])
def test_a_removed_update_is_a_checksum_failure_of_that_instrument_only(instrument: str) -> None:
    updates = [
        (index, event)
        for index, event in book_messages()
        if isinstance(event, BookDeltaEvent) and event.instrument == instrument
    ]
    dropped, _ = updates[len(updates) // 2]
    recorded = frames()
    run = replay(recorded[:dropped] + recorded[dropped + 1 :])
    assert [(p.instrument, p.problem.kind) for p in run.problems] == [
        (instrument, ProblemKind.CHECKSUM)
    ]
    full = full_replay()
    for name, snap in full.latest.items():
        if name != instrument:
            assert replace(run.latest[name], ts_book=0) == replace(snap, ts_book=0)
    assert not run.session.syncs[instrument].live  # waits for a new snapshot
