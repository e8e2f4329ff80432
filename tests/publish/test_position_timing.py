"""The ``position_op`` stage of one process or an edge: every op that reaches the position
service is timed from its submission to its answer, ack or refusal, after the answer is
queued; the position book on a store the test commits by hand, on a clock it moves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from publish.exceptions import RequestError
from publish.position import Position
from publish.position_timing import TimedPositionService
from publish.protocol import ErrorCode
from tests.publish.manual_store import ManualStore, new_book
from tests.publish.support import BTC

pytestmark = pytest.mark.timeout(30)

ORDER = {"instrument": BTC, "side": "buy", "qty": "0.5", "price": "43000.1"}


@dataclass
class Clock:
    now: int = 1_000

    def __call__(self) -> int:
        return self.now


@dataclass
class Timed:
    """The decorator's durations, each with what the op's reply had been told by then."""

    durations: list[int] = field(default_factory=list)
    answered_before: list[int] = field(default_factory=list)
    answers: list[Position | ErrorCode] = field(default_factory=list)

    def acknowledge(self, position: Position) -> None:
        self.answers.append(position)

    def refuse(self, refusal: RequestError) -> None:
        self.answers.append(refusal.code)

    def on_answered(self, duration: int) -> None:
        self.durations.append(duration)
        self.answered_before.append(len(self.answers))


async def settled() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_an_op_is_timed_from_its_submission_to_its_answer_after_the_answer() -> None:
    store, clock, timed = ManualStore(), Clock(), Timed()
    service = TimedPositionService(new_book(store), timed.on_answered, clock=clock)

    service.submit_open("acct-1", position_id="p-1", reply=timed, **ORDER)
    clock.now += 7_000_000  # the window and the write
    assert timed.durations == []  # nothing is answered before the commit
    store.commit()
    await settled()
    assert timed.durations == [7_000_000]
    assert timed.answered_before == [1]  # the ack was queued first, then timed
    assert isinstance(timed.answers[0], Position) and timed.answers[0].id == "p-1"

    service.submit_close("acct-1", "p-1", reply=timed)
    clock.now += 3_000_000
    store.commit()
    await settled()
    assert timed.durations == [7_000_000, 3_000_000]
    assert isinstance(timed.answers[1], Position) and timed.answers[1].closed_ts is not None


async def test_a_refusal_is_timed_too_whether_at_once_or_at_the_timeout() -> None:
    store, clock, timed = ManualStore(), Clock(), Timed()
    service = TimedPositionService(
        new_book(store, ack_timeout=0.02), timed.on_answered, clock=clock
    )

    service.submit_open("acct-1", position_id="p-1", reply=timed, **{**ORDER, "side": "hold"})
    assert timed.answers == [ErrorCode.INVALID_POSITION]
    assert timed.durations == [0]  # refused in the call: no time passed on the clock

    service.submit_open("acct-1", position_id="p-2", reply=timed, **ORDER)
    clock.now += 25_000_000
    await asyncio.sleep(0.05)  # the store never commits: the request times out
    assert timed.answers[1] == ErrorCode.STORAGE_UNAVAILABLE
    assert timed.durations == [0, 25_000_000]
    assert timed.answered_before == [1, 2]
