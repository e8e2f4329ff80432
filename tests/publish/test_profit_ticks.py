"""The profit engine's bounded ticks, against a recording subscriber (no sockets): a tick
marks at most ``marks_per_tick`` positions, oldest change first, and the rest follows in
the next loop iterations without another price change; the account's messages of those
ticks go out together when the last of them is marked (``test_profit_batches``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import orjson
import pytest

from book.fixed import parse_fixed
from book.status import InstrumentState
from publish.fanout import Fanout, Topic
from publish.position import Position, PositionSide
from publish.profit import ProfitEngine
from tests.publish.support import BTC, ETH, KRAKEN_BTC, Feed, clock, new_registry

ACCOUNT = "acct-1"


class Recorder:
    """A subscriber that keeps each batch as one list (what ``offer_all`` got), and the
    fan-out tick that offered it."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.ticks: list[list[dict[str, object]]] = []
        self.offered_in: list[int] = []

    def offer(self, key: Topic, message: bytes) -> None:
        self.ticks.append([orjson.loads(message)])
        self.offered_in.append(self.fanout.counters.ticks)

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        self.ticks.append([orjson.loads(message) for message in messages.values()])
        self.offered_in.append(self.fanout.counters.ticks)

    def marks(self) -> list[list[tuple[object, object]]]:
        """Per tick: (instrument, mark) of each profit message."""
        return [
            [(m["instrument"], m["mark"]) for m in tick if m["type"] == "profit"]
            for tick in self.ticks
        ]


def position(number: int, instrument: str) -> Position:
    return Position(
        id=f"p-{number}",
        account=ACCOUNT,
        instrument=instrument,
        side=PositionSide.BUY,
        qty=parse_fixed("1"),
        entry_price=parse_fixed("100"),
        opened_ts=1,
    )


async def loop_turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def engine_with_positions(marks_per_tick: int) -> tuple[Feed, ProfitEngine, Recorder]:
    """Six long positions (two per instrument) of a subscribed account, initial state sent."""
    registry = new_registry()
    feed = Feed(registry)
    fanout = Fanout(registry, clock=clock)
    engine = ProfitEngine(registry, fanout, marks_per_tick=marks_per_tick)
    for instrument in (BTC, ETH, KRAKEN_BTC):
        feed.status(instrument, InstrumentState.LIVE)
        feed.quote(instrument, ("100", "1"), ("101", "1"))
    for number, instrument in enumerate((BTC, BTC, ETH, ETH, KRAKEN_BTC, KRAKEN_BTC)):
        engine.position_opened(position(number, instrument))
    recorder = Recorder(fanout)
    engine.add(recorder, ACCOUNT)
    engine.send_current(recorder, ACCOUNT)
    await loop_turns()
    recorder.ticks.clear()
    recorder.offered_in.clear()
    return feed, engine, recorder


async def test_a_tick_marks_whole_instruments_up_to_its_bound_oldest_change_first() -> None:
    feed, _, recorder = await engine_with_positions(marks_per_tick=2)
    # One loop iteration: ETH, then BTC, then KRAKEN_BTC change; ETH changes again while
    # it waits, which keeps its place and only updates its price.
    feed.quote(ETH, ("102", "1"), None)
    feed.quote(BTC, ("103", "1"), None)
    feed.quote(KRAKEN_BTC, ("104", "1"), None)
    feed.quote(ETH, ("105", "1"), None)
    ticks = recorder.fanout.counters.ticks
    await loop_turns()
    assert recorder.fanout.counters.ticks - ticks == 3  # one instrument (2 positions) a tick
    # ...and the account's messages of the three in one batch when the last is marked.
    assert [tick - ticks for tick in recorder.offered_in] == [3]
    assert recorder.marks() == [
        [(ETH, "105"), (ETH, "105"), (BTC, "103"), (BTC, "103")]
        + [(KRAKEN_BTC, "104"), (KRAKEN_BTC, "104")],
    ]
    assert recorder.ticks[0][-1]["pnl"] == "24"


async def test_an_unbounded_tick_marks_every_dirty_instrument_at_once() -> None:
    feed, _, recorder = await engine_with_positions(marks_per_tick=1_000)
    feed.quote(ETH, ("102", "1"), None)
    feed.quote(BTC, ("103", "1"), None)
    await loop_turns()
    assert recorder.marks() == [[(ETH, "102"), (ETH, "102"), (BTC, "103"), (BTC, "103")]]


async def test_waiting_instruments_of_an_unwatched_account_are_dropped() -> None:
    feed, engine, recorder = await engine_with_positions(marks_per_tick=2)
    feed.quote(ETH, ("102", "1"), None)
    feed.quote(BTC, ("103", "1"), None)
    engine.remove(recorder, ACCOUNT)
    await loop_turns()
    assert recorder.ticks == []


def test_the_bound_must_be_positive() -> None:
    registry = new_registry()
    with pytest.raises(ValueError, match="marks_per_tick"):
        ProfitEngine(registry, Fanout(registry), marks_per_tick=0)
