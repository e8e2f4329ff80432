"""A positions shard serving ops over a real nats-server, its storage a store the test
commits by hand: every op is a call on the book (no task per op), its answer published
to the op's reply subject at the commit, at the book's ``ack_timeout`` or at once."""

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
from bus.positions import OpenOp, PositionSubjects, decode_answer, encode_op, encode_position
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


def open_op(position_id: str) -> bytes:
    """The open ``tests.publish.test_position_book.expected`` describes, as sent on the bus."""
    return encode_op(
        OpenOp(
            account="acct-1",
            position_id=position_id,
            instrument=BTC,
            side="buy",
            qty="0.5",
            price="43000.1",
        )
    )


class Requester:
    """An edge's side of the ops, raw: each op published with its own reply subject."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.answers: dict[str, bytes] = {}

    async def listen(self) -> None:
        await self.client.subscribe("answers.>", cb=self._on_answer)
        await self.client.flush()

    async def send(self, reply: str, payload: bytes) -> None:
        await self.client.publish(SUBJECTS.ops(0), payload, reply=f"answers.{reply}")
        await self.client.flush()

    async def _on_answer(self, msg: Msg) -> None:
        self.answers[msg.subject.removeprefix("answers.")] = msg.data


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


async def test_ops_in_flight_take_no_task_and_are_answered_at_their_commit(
    nats_server: NatsServer,
) -> None:
    store = ManualStore()
    count = 50
    async with serving(nats_server, store) as (shard, _, requester):
        before = asyncio.all_tasks()
        for n in range(count):
            await requester.send(str(n), open_op(f"p{n}"))
        await eventually(lambda: shard.counters.ops == count, "every op reached the shard")
        started = {task.get_name() for task in asyncio.all_tasks() - before}
        assert not started, f"tasks started for ops in flight: {started}"
        assert len(store.inserts) == count
        await requester.client.flush()
        assert requester.answers == {}, "answered before the commit"

        store.commit()
        await eventually(lambda: len(requester.answers) == count, "every op answered")
        assert requester.answers == {  # the book's clock counts up from NOW, a stamp per open
            str(n): encode_position(expected(f"p{n}", NOW + n)) for n in range(count)
        }
        assert (shard.counters.acks, shard.counters.refusals) == (count, 0)


async def test_an_op_unconfirmed_at_ack_timeout_is_refused_and_its_retry_gets_the_ack(
    nats_server: NatsServer,
) -> None:
    store = ManualStore()
    async with serving(nats_server, store, ack_timeout=0.2) as (shard, _, requester):
        await requester.send("first", open_op("p1"))
        await eventually(lambda: "first" in requester.answers, "the timeout's refusal")
        refusal = decode_answer(requester.answers["first"])
        assert isinstance(refusal, RequestError)
        assert refusal.code is ErrorCode.STORAGE_UNAVAILABLE
        assert "did not confirm within 0.2s" in refusal.message

        await requester.send("retry", open_op("p1"))  # waits for the queued change
        await eventually(lambda: shard.counters.ops == 2, "the retry reached the shard")
        assert len(store.inserts) == 1, "a retry queues no second change"
        store.commit()
        stored = encode_position(expected("p1", NOW))
        await eventually(lambda: "retry" in requester.answers, "the retry's ack")
        assert requester.answers["retry"] == stored

        await requester.send("again", open_op("p1"))  # committed: answered at once
        await eventually(lambda: "again" in requester.answers, "the second retry's ack")
        assert requester.answers["again"] == stored
        assert (shard.counters.acks, shard.counters.refusals) == (2, 1)


async def test_an_op_in_flight_when_the_shard_stops_is_stored_but_not_answered(
    nats_server: NatsServer,
) -> None:
    store = ManualStore()
    async with serving(nats_server, store) as (shard, task, requester):
        await requester.send("1", open_op("p1"))
        await eventually(lambda: shard.counters.ops == 1, "the op reached the shard")
        await _stop(task)
        store.commit()
        await asyncio.sleep(0)
        assert (shard.counters.acks, shard.counters.refusals) == (0, 0)
        assert [position.id for position in shard.book.positions("acct-1")] == ["p1"]
