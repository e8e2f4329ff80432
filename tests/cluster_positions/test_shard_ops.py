"""A positions shard serving ops over a real nats-server, its storage a store the test
commits by hand: every op of a request is a call on the book (no task per op), its
answer published to the request's reply subject at the commit, at the book's
``ack_timeout`` or at once, a commit's answers for one reply subject in one message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.link import BusLink
from bus.natsserver import NatsServer
from bus.position_shard import PositionShard
from bus.positions import (
    Answer,
    OpenOp,
    OpNumber,
    PositionSubjects,
    decode_answers,
    encode_ops,
)
from publish.exceptions import RequestError
from publish.fanout import Fanout
from publish.profit import ProfitEngine
from publish.protocol import ErrorCode
from tests.cluster_positions.cluster import PREFIX, _run_all, _stop
from tests.publish.manual_store import NOW, ManualStore, expected, new_book
from tests.publish.support import BTC, new_registry
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

SUBJECTS = PositionSubjects(PREFIX)


def open_op(position_id: str) -> OpenOp:
    """The open ``tests.publish.manual_store.expected`` describes, as sent on the bus."""
    return OpenOp(
        account="acct-1",
        position_id=position_id,
        instrument=BTC,
        side="buy",
        qty="0.5",
        price="43000.1",
    )


class Requester:
    """An edge's side of the ops, raw: requests published with a reply subject each, the
    answer messages kept per reply subject as they came."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.messages: dict[str, list[list[tuple[OpNumber, Answer]]]] = {}

    def answers(self, reply: str) -> dict[OpNumber, Answer]:
        return {n: answer for message in self.messages.get(reply, []) for n, answer in message}

    async def listen(self) -> None:
        await self.client.subscribe("answers.>", cb=self._on_answer)
        await self.client.flush()

    async def send(self, reply: str, payload: bytes) -> None:
        await self.client.publish(SUBJECTS.ops(0), payload, reply=f"answers.{reply}")
        await self.client.flush()

    async def _on_answer(self, msg: Msg) -> None:
        reply = msg.subject.removeprefix("answers.")
        self.messages.setdefault(reply, []).append(decode_answers(msg.data))


@contextlib.asynccontextmanager
async def serving(
    server: NatsServer, store: ManualStore, *, ack_timeout: float = 5.0
) -> AsyncIterator[tuple[PositionShard, asyncio.Task[None], Requester]]:
    """A shard (its ``PositionBook`` on ``store``) and a requester, both connected."""
    registry = new_registry()
    fanout = Fanout(registry, metrics_interval=None)
    link = BusLink([server.url], name="shard")
    shard = PositionShard(
        new_book(store, ack_timeout=ack_timeout),
        ProfitEngine(registry, fanout),
        fanout,
        link,
        SUBJECTS,
        shard=0,
        shards=1,
    )
    task = asyncio.create_task(_run_all(link.run, shard.run))
    client = await nats.connect(server.url)
    try:
        await shard.wait_ready()
        requester = Requester(client)
        await requester.listen()
        yield shard, task, requester
    finally:
        await client.close()
        await _stop(task)


async def test_ops_in_flight_take_no_task_and_a_commit_answers_them_in_one_message(
    nats_server: NatsServer,
) -> None:
    store = ManualStore()
    count = 50
    async with serving(nats_server, store) as (shard, _, requester):
        before = asyncio.all_tasks()
        for n in range(0, count, 10):  # five requests of ten ops, numbered by the sender
            await requester.send(
                "edge", encode_ops((k, open_op(f"p{k}")) for k in range(n, n + 10))
            )
        await eventually(lambda: shard.counters.ops == count, "every op reached the shard")
        started = {task.get_name() for task in asyncio.all_tasks() - before}
        assert not started, f"tasks started for ops in flight: {started}"
        assert len(store.inserts) == count
        await requester.client.flush()
        assert requester.messages == {}, "answered before the commit"

        store.commit()
        await eventually(lambda: len(requester.answers("edge")) == count, "every op answered")
        assert len(requester.messages["edge"]) == 1, "one commit, one message per reply subject"
        assert requester.answers("edge") == {  # the book's clock counts up from NOW
            n: expected(f"p{n}", NOW + n) for n in range(count)
        }
        assert (shard.counters.acks, shard.counters.refusals) == (count, 0)


async def test_each_reply_subject_gets_its_own_answers(nats_server: NatsServer) -> None:
    store = ManualStore()
    async with serving(nats_server, store) as (shard, _, requester):
        await requester.send("a", encode_ops([(7, open_op("p1")), (8, open_op("p2"))]))
        await requester.send("b", encode_ops([(7, open_op("p3"))]))
        await eventually(lambda: shard.counters.ops == 3, "every op reached the shard")
        store.commit()
        await eventually(lambda: len(requester.answers("b")) == 1, "b's answer")
        await eventually(lambda: len(requester.answers("a")) == 2, "a's answers")
        assert requester.answers("a") == {7: expected("p1", NOW), 8: expected("p2", NOW + 1)}
        assert requester.answers("b") == {7: expected("p3", NOW + 2)}


async def test_requests_naming_one_answer_subject_get_their_answers_together(
    nats_server: NatsServer,
) -> None:
    """An edge's requests each have a reply subject of their own (for the bus's status)
    and name one ``answers_to``: a commit's answers for all of them go there, together."""
    store = ManualStore()
    async with serving(nats_server, store) as (shard, _, requester):
        for r in range(3):
            ops = encode_ops([(r, open_op(f"p{r}"))], answers_to="answers.edge")
            await requester.send(f"edge.{r}", ops)
        await eventually(lambda: shard.counters.ops == 3, "every op reached the shard")
        store.commit()
        await eventually(lambda: len(requester.answers("edge")) == 3, "every op answered")
        assert len(requester.messages["edge"]) == 1, "one commit, one message"
        assert not any(reply.startswith("edge.") for reply in requester.messages)
        assert requester.answers("edge") == {r: expected(f"p{r}", NOW + r) for r in range(3)}


async def test_a_bad_op_is_refused_under_its_number_and_a_bad_request_is_dropped(
    nats_server: NatsServer,
) -> None:
    store = ManualStore()
    async with serving(nats_server, store) as (shard, _, requester):
        bad_op = b'{"v":2,"ops":[{"n":1,"op":"open","account":"acct-1"},{"n":2,"op":"close"}]}'
        await requester.send("bad", bad_op)
        await eventually(lambda: len(requester.answers("bad")) == 2, "both refused")
        refusals = requester.answers("bad")
        assert all(isinstance(refusal, RequestError) for refusal in refusals.values())
        assert [(r.code, r.message) for r in refusals.values()] == [  # type: ignore[union-attr]
            (ErrorCode.BAD_REQUEST, "position op without 'position_id'"),
            (ErrorCode.BAD_REQUEST, "position op without 'account'"),
        ]

        for payload in (b"{", b'{"v":1,"op":"close"}', b'{"v":2,"ops":[{"op":"close"}]}'):
            await requester.send("dropped", payload)
        await eventually(lambda: shard.counters.bad_requests == 5, "counted")
        await requester.send("good", encode_ops([(0, open_op("p1"))]))
        store_ops = 3  # the two refused, and this one
        await eventually(lambda: shard.counters.ops == store_ops, "the good op reached it")
        store.commit()
        await eventually(lambda: 0 in requester.answers("good"), "the good op's ack")
        assert "dropped" not in requester.messages


async def test_an_op_unconfirmed_at_ack_timeout_is_refused_and_its_retry_gets_the_ack(
    nats_server: NatsServer,
) -> None:
    store = ManualStore()
    async with serving(nats_server, store, ack_timeout=0.2) as (shard, _, requester):
        await requester.send("first", encode_ops([(1, open_op("p1"))]))
        await eventually(lambda: 1 in requester.answers("first"), "the timeout's refusal")
        refusal = requester.answers("first")[1]
        assert isinstance(refusal, RequestError)
        assert refusal.code is ErrorCode.STORAGE_UNAVAILABLE
        assert "did not confirm within 0.2s" in refusal.message

        await requester.send("retry", encode_ops([(2, open_op("p1"))]))  # waits for the change
        await eventually(lambda: shard.counters.ops == 2, "the retry reached the shard")
        assert len(store.inserts) == 1, "a retry queues no second change"
        store.commit()
        await eventually(lambda: 2 in requester.answers("retry"), "the retry's ack")
        assert requester.answers("retry")[2] == expected("p1", NOW)

        await requester.send("again", encode_ops([(3, open_op("p1"))]))  # answered at once
        await eventually(lambda: 3 in requester.answers("again"), "the second retry's ack")
        assert requester.answers("again")[3] == expected("p1", NOW)
        assert (shard.counters.acks, shard.counters.refusals) == (2, 1)


async def test_an_op_in_flight_when_the_shard_stops_is_stored_but_not_answered(
    nats_server: NatsServer,
) -> None:
    store = ManualStore()
    async with serving(nats_server, store) as (shard, task, requester):
        await requester.send("1", encode_ops([(1, open_op("p1"))]))
        await eventually(lambda: shard.counters.ops == 1, "the op reached the shard")
        await _stop(task)
        store.commit()
        await asyncio.sleep(0)
        assert (shard.counters.acks, shard.counters.refusals) == (0, 0)
        assert [position.id for position in shard.book.positions("acct-1")] == ["p1"]
