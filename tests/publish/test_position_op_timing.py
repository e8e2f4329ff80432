"""The ``position_op`` stage of one process or an edge: every op a connection submits to
the position service is timed from its submission to its answer, ack or refusal, right
after the answer is queued; an op refused before it reaches the service is not. The
position book on a store the test commits by hand, the connection's real parts driven
by hand, on a clock the test moves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from publish.auth import AuthPolicy, TokenAuthority
from publish.client import ClientSession
from publish.counters import Counters
from publish.exceptions import RequestError
from publish.fanout import Fanout
from publish.position_requests import PositionRequests
from publish.protocol import (
    AuthRequest,
    ErrorCode,
    PositionCloseRequest,
    PositionOpenRequest,
)
from tests.publish.manual_store import ManualStore, new_book
from tests.publish.support import BTC, HandSink, new_registry

pytestmark = pytest.mark.timeout(30)

SECRET = b"position-op-timing-secret-0123456789"


@dataclass
class Clock:
    now: int = 1_000

    def __call__(self) -> int:
        return self.now


@dataclass
class Stage:
    """The durations heard, each with how many answers the connection had sent or queued
    by then (the auth ack not counted)."""

    session: ClientSession
    sink: HandSink
    durations: list[int] = field(default_factory=list)
    answered_before: list[int] = field(default_factory=list)
    refused: list[ErrorCode] = field(default_factory=list)

    def on_answered(self, duration: int) -> None:
        self.durations.append(duration)
        answers = len(self.sink.frames) - 1 + self.session.outbox.replies_pending
        self.answered_before.append(answers + len(self.refused))

    def refuse(self, refusal: RequestError) -> None:
        self.refused.append(refusal.code)


def open_request(request_id: int, position_id: str, side: str = "buy") -> PositionOpenRequest:
    return PositionOpenRequest(request_id, position_id, BTC, side, "0.5", "43000.1")


def connection(
    store: ManualStore, *, ack_timeout: float = 5.0
) -> tuple[PositionRequests, Stage, Clock]:
    """The position requests of an authenticated connection, timed on a clock of its own."""
    tokens = TokenAuthority(SECRET)
    sink = HandSink()
    session = ClientSession(sink, Fanout(new_registry()), auth=AuthPolicy(tokens=tokens))
    session.requests.serve(AuthRequest(0, tokens.issue("acct-1", ttl=60)))
    session.outbox.flush()
    stage, clock = Stage(session, sink), Clock()
    requests = PositionRequests(
        new_book(store, ack_timeout=ack_timeout),
        session.credentials,
        session.outbox,
        Counters(),
        refuse=stage.refuse,
        on_answered=stage.on_answered,
        clock=clock,
    )
    return requests, stage, clock


async def settled() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_an_op_is_timed_from_its_submission_to_its_answer_after_the_answer() -> None:
    store = ManualStore()
    requests, stage, clock = connection(store)

    requests.serve(open_request(1, "p-1"))
    clock.now += 7_000_000  # the window and the write
    assert stage.durations == []  # nothing is answered before the commit
    store.commit()
    await settled()
    assert stage.durations == [7_000_000]
    assert stage.answered_before == [1]  # the ack was written first, then timed

    requests.serve(PositionCloseRequest(2, "p-1"))
    clock.now += 3_000_000
    store.commit()
    await settled()
    assert stage.durations == [7_000_000, 3_000_000]
    assert stage.answered_before == [1, 2]


async def test_a_refusal_is_timed_too_whether_at_once_or_at_the_timeout() -> None:
    store = ManualStore()
    requests, stage, clock = connection(store, ack_timeout=0.02)

    requests.serve(open_request(1, "p-1", side="hold"))
    assert stage.refused == [ErrorCode.INVALID_POSITION]
    assert stage.durations == [0]  # refused in the call: no time passed on the clock

    requests.serve(open_request(2, "p-2"))
    clock.now += 25_000_000
    await asyncio.sleep(0.05)  # the store never commits: the request times out
    assert stage.durations == [0, 25_000_000]
    assert stage.answered_before == [1, 2]  # the storage_unavailable error, then timed


async def test_an_op_refused_before_the_service_is_not_timed_and_a_late_answer_is() -> None:
    store = ManualStore()
    requests, stage, clock = connection(store)
    anonymous = PositionRequests(
        new_book(store),
        ClientSession(HandSink(), Fanout(new_registry())).credentials,
        stage.session.outbox,
        Counters(),
        refuse=stage.refuse,
        on_answered=stage.on_answered,
        clock=clock,
    )
    with pytest.raises(RequestError) as refused:
        anonymous.serve(open_request(1, "p-0"))
    assert refused.value.code is ErrorCode.AUTH_REQUIRED
    assert stage.durations == []

    requests.serve(open_request(2, "p-1"))
    requests.cancel()  # the connection ended: its ack is dropped, the op still timed
    clock.now += 5_000_000
    store.commit()
    await settled()
    assert stage.durations == [5_000_000]
    assert stage.answered_before == [0]
