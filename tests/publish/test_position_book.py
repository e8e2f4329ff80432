"""The position book against a store the test commits by hand: what a request is
answered and when, what the book keeps of a position once its change is decided, and
how a request's ``ack_timeout`` ends it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from publish.exceptions import RequestError
from publish.position import Position
from publish.positions import PositionBook
from publish.protocol import ErrorCode
from publish.storage.flusher import InsertOutcome, StorageHealth
from tests.publish.manual_store import NOW, ManualStore, expected, new_book
from tests.publish.support import BTC, tracked_by_type, tracked_growth

pytestmark = pytest.mark.timeout(30)

ORDER = {"instrument": BTC, "side": "buy", "qty": "0.5", "price": "43000.1"}


@dataclass
class Answers:
    """A ``PositionReply`` that records what it was told."""

    acks: list[Position] = field(default_factory=list)
    refusals: list[tuple[ErrorCode, str]] = field(default_factory=list)

    def acknowledge(self, position: Position) -> None:
        self.acks.append(position)

    def refuse(self, refusal: RequestError) -> None:
        self.refusals.append((refusal.code, refusal.message))


def submit_open(book: PositionBook, position_id: str, **order: str) -> Answers:
    answers = Answers()
    book.submit_open("acct-1", position_id=position_id, **(ORDER | order), reply=answers)
    return answers


def submit_close(book: PositionBook, position_id: str) -> Answers:
    answers = Answers()
    book.submit_close("acct-1", position_id, reply=answers)
    return answers


async def settled() -> None:
    """Let the commit callbacks run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_an_open_is_acked_at_its_commit_and_a_retry_after_it_at_once() -> None:
    store = ManualStore()
    book = new_book(store)
    first = submit_open(book, "p-1")
    retry = submit_open(book, "p-1")  # the same order while the open is pending: it waits
    assert (first, retry) == (Answers(), Answers())
    book._check()
    store.commit()
    await settled()
    opened = expected("p-1", NOW)
    assert (first.acks, retry.acks) == ([opened], [opened])
    late = submit_open(book, "p-1")  # committed: acked at once, the first opened_ts
    assert late == Answers(acks=[opened])
    assert store.inserts == []  # nothing written again
    other = submit_open(book, "p-1", qty="0.6")
    assert other.refusals == [
        (ErrorCode.DUPLICATE_POSITION, "position id 'p-1' is already used by this account")
    ]
    assert book.positions("acct-1") == [opened]
    book._check()


async def test_a_committed_position_adds_no_object_the_collector_tracks() -> None:
    store = ManualStore()
    book = new_book(store)
    answers = [submit_open(book, f"p-{n}") for n in range(200)]
    store.commit()
    await settled()
    assert all(len(answer.acks) == 1 for answer in answers)
    book._check()
    del answers
    before = tracked_by_type()
    more = [submit_open(book, f"q-{n}") for n in range(1000)]
    store.commit()
    await settled()
    assert all(len(answer.acks) == 1 for answer in more)
    del more
    # No future, no list of waiters, no entry object around the Position, and the
    # Position itself untracked (publish.untracked): full passes never walk open positions.
    assert tracked_growth(before, at_least=100) == {}
    book._check()


async def test_a_close_while_the_open_is_pending_is_refused_then_closes_once_acked() -> None:
    store = ManualStore()
    book = new_book(store)
    opening = submit_open(book, "p-1")
    pending = submit_close(book, "p-1")
    assert pending.refusals == [
        (ErrorCode.POSITION_PENDING, "position 'p-1' is not acknowledged yet")
    ]
    store.commit()
    await settled()
    closing = submit_close(book, "p-1")
    retried = submit_close(book, "p-1")
    reopened = submit_open(book, "p-1")  # its id is taken while it closes
    assert reopened.refusals == [
        (ErrorCode.DUPLICATE_POSITION, "position id 'p-1' is already used by this account")
    ]
    book._check()
    store.commit()
    await settled()
    closed = expected("p-1", NOW, closed_ts=NOW + 1)
    assert (opening.acks, closing.acks, retried.acks) == (
        [expected("p-1", NOW)],
        [closed],
        [closed],
    )
    assert submit_close(book, "p-1").refusals == [
        (ErrorCode.UNKNOWN_POSITION, "no open position 'p-1'")
    ]
    assert len(book) == 0
    book._check()


async def test_an_unconfirmed_change_is_refused_at_its_timeout_and_a_retry_gets_the_ack() -> None:
    store = ManualStore()
    book = new_book(store, ack_timeout=0.05)
    first = submit_open(book, "p-1")
    await asyncio.sleep(0.03)
    second = submit_open(book, "p-2")
    await asyncio.sleep(0.04)  # past the first's deadline, not the second's
    timed_out = (
        ErrorCode.STORAGE_UNAVAILABLE,
        "storage unavailable: the database did not confirm within 0.05s; the change is "
        "queued and will be stored when it answers: send the same request again for its "
        "acknowledgement",
    )
    assert (first.refusals, second.refusals) == ([timed_out], [])
    book._check()
    retry = submit_open(book, "p-1")
    store.commit()
    await settled()
    assert (first.acks, retry.acks, second.acks) == (
        [],
        [expected("p-1", NOW)],
        [expected("p-2", NOW + 1)],
    )
    await asyncio.sleep(0.07)  # the timer finds nothing left to refuse
    assert retry.refusals == second.refusals == []
    book._check()


async def test_waiting_requests_of_an_id_taken_in_storage_are_refused_as_duplicates() -> None:
    store = ManualStore()
    book = new_book(store)
    first = submit_open(book, "p-1")
    retry = submit_open(book, "p-1")
    store.commit(InsertOutcome.ID_TAKEN)
    await settled()
    duplicate = (ErrorCode.DUPLICATE_POSITION, "position id 'p-1' is already used by this account")
    assert (first.refusals, retry.refusals) == ([duplicate], [duplicate])
    assert len(book) == 0 and book.accounts == 0
    book._check()


class _Heard:
    """A listener that records what it hears, and fails on the position ``fails_on``."""

    def __init__(self, fails_on: str) -> None:
        self.fails_on = fails_on
        self.heard: list[tuple[str, str]] = []

    def position_opened(self, position: Position) -> None:
        self.heard.append(("opened", position.id))
        if position.id == self.fails_on:
            raise RuntimeError("the listener failed")

    def position_closed(self, position: Position) -> None:
        self.heard.append(("closed", position.id))


async def test_one_commit_answers_each_change_of_its_batch_whatever_a_listener_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch's changes are told in one call: each request gets its own answer (opens
    acked, a taken id refused, a close acked with its closed position), the listeners
    hear each change after its acks, and a listener failing on one position is logged
    while the rest of the batch is still told."""
    store = ManualStore()
    book = new_book(store)
    submit_open(book, "p-0")
    store.commit()
    await settled()
    listener = _Heard(fails_on="p-1")
    book.add_listener(listener)
    listener.heard.clear()  # the replay of p-0
    opened, taken, later = (submit_open(book, name) for name in ("p-1", "p-2", "p-3"))
    closing = submit_close(book, "p-0")
    store.commit(taken=frozenset({"p-2"}))
    await settled()
    assert (opened.acks, later.acks) == ([expected("p-1", NOW + 1)], [expected("p-3", NOW + 3)])
    duplicate = (ErrorCode.DUPLICATE_POSITION, "position id 'p-2' is already used by this account")
    assert (opened.refusals, taken.acks, taken.refusals) == ([], [], [duplicate])
    assert closing.acks == [expected("p-0", NOW, closed_ts=NOW + 4)]
    assert listener.heard == [("opened", "p-1"), ("opened", "p-3"), ("closed", "p-0")]
    assert [record.getMessage() for record in caplog.records] == [
        "telling of a committed position change failed"
    ]
    assert len(book) == 2
    book._check()


async def test_a_degraded_store_refuses_at_once_and_queues_nothing() -> None:
    store = ManualStore(health=StorageHealth.DEGRADED)
    book = new_book(store)
    refused = submit_open(book, "p-1")
    assert refused.refusals == [
        (
            ErrorCode.STORAGE_UNAVAILABLE,
            "storage unavailable: the database is not accepting writes; nothing was changed",
        )
    ]
    assert store.inserts == [] and len(book) == 0


async def test_an_awaited_open_cancelled_before_its_commit_gets_no_ack() -> None:
    store = ManualStore()
    book = new_book(store)
    acknowledged: list[Position] = []
    waiting = asyncio.create_task(
        book.open("acct-1", position_id="p-1", **ORDER, acknowledge=acknowledged.append)
    )
    await settled()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    store.commit()
    await settled()
    assert acknowledged == []
    assert book.positions("acct-1") == [expected("p-1", NOW)]  # the change still committed
    assert await book.open("acct-1", position_id="p-1", **ORDER) == expected("p-1", NOW)
    book._check()


async def test_requests_are_told_apart_by_identity_not_by_their_replies_equality() -> None:
    store = ManualStore()
    book = new_book(store, ack_timeout=0.05)
    first = submit_open(book, "p-1")
    await asyncio.sleep(0.03)
    retry = submit_open(book, "p-1")  # equal to ``first`` (both have heard nothing)
    assert retry == first
    await asyncio.sleep(0.04)  # past the first's deadline only
    assert (len(first.refusals), retry.refusals) == (1, [])
    book._check()
    store.commit()
    await settled()
    assert (first.acks, retry.acks) == ([], [expected("p-1", NOW)])
    book._check()
