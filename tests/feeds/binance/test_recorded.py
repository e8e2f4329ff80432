"""Binance books rebuilt from real recorded traffic equal Binance's own bookTicker."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from feeds.binance.adapter import BinanceAdapter
from feeds.binance.sync import BinanceDepthSync
from feeds.dispatch import BookDispatcher
from feeds.events import BookDeltaEvent, FeedEvent, TopOfBookEvent
from feeds.recordings import FrameKind, RecordedFrame, read_recording
from feeds.symbols import SymbolMap, split_concatenated
from feeds.sync import ProblemKind, SyncProblem
from tests.recorded import (
    BINANCE_SPOT_CRYPTOFEED,
    BINANCE_SPOT_HFT,
    BINANCE_USDM_CRYPTOFEED,
    BINANCE_USDM_HFT,
)

SPOT_CF = ["NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"]
USDM_CF = ["SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"]


@cache
def recorded_frames(path: Path) -> list[RecordedFrame]:
    return list(read_recording(path))


@cache
def full_replay(path: Path, natives: tuple[str, ...], futures: bool) -> Replay:
    return replay(adapter_for(list(natives), futures=futures), recorded_frames(path))


def adapter_for(natives: list[str], *, futures: bool) -> BinanceAdapter:
    suffix = "-PERP" if futures else ""
    venue = "binance-usdm" if futures else "binance"
    symbols = SymbolMap(venue, {split_concatenated(n) + suffix: n for n in natives})
    return BinanceAdapter(symbols, futures=futures)


def events(adapter: BinanceAdapter, frames: list[RecordedFrame]) -> Iterator[tuple[int, FeedEvent]]:
    parser = adapter.new_parser()
    for frame in frames:
        if frame.kind is FrameKind.HTTP:
            instrument = adapter.snapshot_instrument(frame.url)
            assert instrument is not None
            yield frame.ts, adapter.parse_snapshot(instrument, frame.data)
        elif frame.kind is FrameKind.RECV:
            for event in parser.parse(frame.data):
                yield frame.ts, event


@dataclass
class Replay:
    checked: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    published: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    problems: list[tuple[str | None, SyncProblem]] = field(default_factory=list)


def replay(
    adapter: BinanceAdapter, frames: list[RecordedFrame], *, keep_tickers: bool = True
) -> Replay:
    """Replay frames; after every published book whose update id equals a recorded
    bookTicker's ``u``, assert the book's top equals that bookTicker."""
    all_events = list(events(adapter, frames))
    tickers: dict[tuple[str, int], list[TopOfBookEvent]] = defaultdict(list)
    for _, event in all_events:
        if isinstance(event, TopOfBookEvent) and event.update_id is not None:
            tickers[event.instrument, event.update_id].append(event)
    dispatcher = BookDispatcher(adapter, adapter.symbols.instruments())
    result = Replay()
    for ts, event in all_events:
        if isinstance(event, TopOfBookEvent) and not keep_tickers:
            continue
        instrument, outcome = dispatcher.handle(event, ts)
        if outcome.problem is not None:
            result.problems.append((instrument, outcome.problem))
        if outcome.snapshot is None or instrument is None:
            continue
        result.published[instrument] += 1
        sync = dispatcher.syncs[instrument]
        assert isinstance(sync, BinanceDepthSync)
        if result.published[instrument] % 16 == 1:  # _check is O(book); keep the suite quick
            sync.book._check()
        for ticker in tickers.get((instrument, sync.last_update_id or -1), ()):
            snap = outcome.snapshot
            assert (snap.bid, snap.bid_qty, snap.ask, snap.ask_qty) == (
                ticker.bid,
                ticker.bid_qty,
                ticker.ask,
                ticker.ask_qty,
            ), f"{instrument} at u={ticker.update_id}"
            result.checked[instrument] += 1
    return result


CASES = [
    # path, natives, futures, bookTicker pairs checked per instrument, books published
    (
        BINANCE_SPOT_CRYPTOFEED,
        SPOT_CF,
        False,
        {"binance:NKN-USDT": 19, "binance:BLZ-ETH": 1, "binance:LRC-BTC": 6, "binance:RUNE-EUR": 0},
        172,
    ),
    (
        BINANCE_USDM_CRYPTOFEED,
        USDM_CF,
        True,
        {
            "binance-usdm:SUSHI-USDT-PERP": 12,
            "binance-usdm:AKRO-USDT-PERP": 7,
            "binance-usdm:KEEP-USDT-PERP": 13,
            "binance-usdm:CTK-USDT-PERP": 18,
        },
        752,
    ),
    (BINANCE_SPOT_HFT, ["BTCUSDT"], False, {"binance:BTC-USDT": 564}, 3449),
    (BINANCE_USDM_HFT, ["BTCUSDT"], True, {"binance-usdm:BTC-USDT-PERP": 629}, 6546),
]


@pytest.mark.parametrize(("path", "natives", "futures", "checked", "published"), CASES)
def test_rebuilt_book_equals_every_matching_book_ticker(
    path: Path, natives: list[str], futures: bool, checked: dict[str, int], published: int
) -> None:
    result = full_replay(path, tuple(natives), futures)
    assert result.problems == []
    assert dict(result.checked) == {k: v for k, v in checked.items() if v}
    assert sum(result.published.values()) == published


@pytest.mark.parametrize(("path", "natives", "futures"), [c[:3] for c in CASES])
def test_a_dropped_depth_message_is_a_gap_of_that_instrument_only(
    path: Path, natives: list[str], futures: bool
) -> None:
    frames = recorded_frames(path)
    adapter = adapter_for(natives, futures=futures)
    depth_frames = [
        i for i, f in enumerate(frames) if f.kind is FrameKind.RECV and "depthUpdate" in f.data
    ]
    dropped_index = depth_frames[len(depth_frames) // 2]
    (dropped,) = adapter.new_parser().parse(frames[dropped_index].data)
    assert isinstance(dropped, BookDeltaEvent)
    result = replay(adapter, frames[:dropped_index] + frames[dropped_index + 1 :])
    assert result.problems, "the dropped message went unnoticed"
    first_instrument, first_problem = result.problems[0]
    assert first_instrument == dropped.instrument
    assert first_problem.kind in (ProblemKind.GAP, ProblemKind.MISMATCH)
    assert {instrument for instrument, _ in result.problems} == {dropped.instrument}
    untouched = [name for name in adapter.symbols.instruments() if name != dropped.instrument]
    full = full_replay(path, tuple(natives), futures)
    for name in untouched:
        assert result.published[name] == full.published[name]
