"""An edge's side of position ops on a real nats-server: the ops its clients make in one
turn of the loop travel as one request, a shard's answers for them come back together,
every op gets its whole ``ack_timeout``, and answers that come late or do not decode are
counted and never answer an op twice."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import NO_RESPONDERS_STATUS
from nats.aio.msg import Msg
from nats.js.api import Header

from bus.link import BusLink
from bus.natsserver import NatsServer
from bus.position_client import ShardClient
from bus.positions import PositionSubjects, decode_request, encode_answers
from publish.exceptions import RequestError
from publish.position import Position, PositionSide
from publish.protocol import ErrorCode
from tests.cluster_positions.cluster import (
    BTC,
    PREFIX,
    NotingReply,
    _run_all,
    _stop,
    accounts_of_shards,
    ingest,
    place,
    settings_for,
    sqlite,
    start_shard,
)
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

SUBJECTS = PositionSubjects(PREFIX)


class TimedReply:
    """A ``PositionReply`` that writes down its answer and the loop time it came."""

    def __init__(self) -> None:
        self.answer: Position | RequestError | None = None
        self.at = 0.0

    def acknowledge(self, position: Position) -> None:
        self._note(position)

    def refuse(self, refusal: RequestError) -> None:
        self._note(refusal)

    def _note(self, answer: Position | RequestError) -> None:
        assert self.answer is None, f"answered twice: {self.answer} then {answer}"
        self.answer = answer
        self.at = asyncio.get_running_loop().time()


def submit(client: ShardClient, account: str, position_id: str, reply: object) -> None:
    client.submit_open(
        account,
        position_id=position_id,
        instrument=BTC,
        side="buy",
        qty="1",
        price="90",
        reply=reply,  # type: ignore[arg-type]
    )


def stored(position_id: str) -> Position:
    """The position a stand-in shard answers ``submit``'s open of ``position_id`` with."""
    return Position(
        id=position_id,
        account="acct",
        instrument=BTC,
        side=PositionSide.BUY,
        qty=1,
        entry_price=90,
        opened_ts=1,
    )


@contextlib.asynccontextmanager
async def running(url: str, *, ack_timeout: float) -> AsyncIterator[ShardClient]:
    """A ``ShardClient`` of one shard on its own link to ``url``, running."""
    link = BusLink([url], name="edge")
    client = ShardClient(link, SUBJECTS, shards=1, ack_timeout=ack_timeout)
    task = asyncio.create_task(_run_all(link.run, client.run))
    try:
        yield client
    finally:
        await _stop(task)


@contextlib.asynccontextmanager
async def tap(url: str, subject: str) -> AsyncIterator[list[Msg]]:
    """Every message on ``subject`` (wildcards allowed), as it came."""
    seen: list[Msg] = []
    connection = await nats.connect(url)

    async def note(msg: Msg) -> None:
        seen.append(msg)

    try:
        await connection.subscribe(subject, cb=note)
        await connection.flush()
        yield seen
    finally:
        await connection.close()


async def test_ops_of_one_turn_travel_as_one_request_and_come_back_in_one_answer(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    ((account,),) = accounts_of_shards(1)
    count = 20
    async with ingest(nats_server.url, BTC):
        shard = await start_shard(
            settings_for(sqlite(tmp_path / "pos.db")), place(nats_server.url, shards=1)
        )
        try:
            await eventually(lambda: bool(shard.running.registry.status(BTC)), "the shard sees BTC")
            async with (
                tap(nats_server.url, SUBJECTS.ops(0)) as requests,
                tap(nats_server.url, "_INBOX.>") as answers,
                running(nats_server.url, ack_timeout=5.0) as client,
            ):
                await client.link.wait_connected()
                events: list[str] = []
                for n in range(count):
                    submit(client, account, f"p-{n}", NotingReply(events))
                await eventually(lambda: len(events) == count, "every op answered")
                assert sorted(events) == sorted(f"ack p-{n}" for n in range(count))
                assert (client.counters.ops, client.counters.acks) == (count, count)
                assert len(requests) == 1, "one turn's ops, one request"
                request = decode_request(requests[0].data)
                assert [n for n, _ in request.ops] == list(range(count))
                # Answers go to the edge's subject for the shard; the reply subject names
                # the request (for the bus's "no responders" status).
                assert request.answers_to is not None
                assert requests[0].reply == f"{request.answers_to}.0"
                assert len(answers) == 1, "one commit, one message of answers"
                assert answers[0].subject == request.answers_to
        finally:
            await shard.stop()


async def test_every_op_gets_its_whole_ack_timeout_even_in_a_request_it_joined_late() -> None:
    """No bus yet: the request gathers until it can be sent; an op that joined it later
    is answered ``storage_unavailable`` at its own deadline, not at the request's."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with running(f"nats://127.0.0.1:{port}", ack_timeout=0.3) as client:
        loop = asyncio.get_running_loop()
        first, second = TimedReply(), TimedReply()
        first_at = loop.time()
        submit(client, "acct", "p-1", first)
        await asyncio.sleep(0.15)
        second_at = loop.time()
        submit(client, "acct", "p-2", second)
        await eventually(lambda: second.answer is not None, "the second op's answer")
    for reply, submitted in ((first, first_at), (second, second_at)):
        assert isinstance(reply.answer, RequestError)
        assert reply.answer.code is ErrorCode.STORAGE_UNAVAILABLE
        assert "did not answer within 0.3s (TimeoutError)" in reply.answer.message
        assert reply.at - submitted >= 0.3 - 0.002, "answered before its timeout"
    assert second.at - first.at >= 0.1, "the second op was answered at the first's deadline"
    assert (client.counters.unavailable, client.counters.acks) == (2, 0)


async def test_late_and_bad_answers_are_counted_and_answer_nothing(
    nats_server: NatsServer,
) -> None:
    """A stand-in shard answers each request with a message that does not decode, then,
    after the edge's timeout, with a good answer: the op stays answered once, as
    ``storage_unavailable``."""
    shard_side = await nats.connect(nats_server.url)
    position = stored("p-1")

    async def answer_badly_then_late(msg: Msg) -> None:
        (n, _), *_ = decode_request(msg.data).ops
        await shard_side.publish(msg.reply, b"{")
        await asyncio.sleep(0.3)
        await shard_side.publish(msg.reply, encode_answers([(n, position)]))

    try:
        await shard_side.subscribe(SUBJECTS.ops(0), cb=answer_badly_then_late)
        await shard_side.flush()
        async with running(nats_server.url, ack_timeout=0.2) as client:
            await client.link.wait_connected()
            reply = TimedReply()
            submit(client, "acct", "p-1", reply)
            await eventually(lambda: client.counters.late_answers == 1, "the late answer")
            assert client.counters.bad_answers == 1
            assert isinstance(reply.answer, RequestError)
            assert reply.answer.code is ErrorCode.STORAGE_UNAVAILABLE
            assert (client.counters.acks, client.counters.unavailable) == (0, 1)
    finally:
        await shard_side.close()


async def test_a_request_no_shard_listens_to_is_answered_at_once(nats_server: NatsServer) -> None:
    """The bus's "no responders" status answers the request's ops ``storage_unavailable``
    right away, not at ``ack_timeout``."""
    async with running(nats_server.url, ack_timeout=30.0) as client:
        await client.link.wait_connected()
        reply = TimedReply()
        submit(client, "acct", "p-1", reply)
        await eventually(lambda: reply.answer is not None, "the answer", limit=10.0)
        assert isinstance(reply.answer, RequestError)
        assert reply.answer.code is ErrorCode.STORAGE_UNAVAILABLE
        assert "(NoRespondersError)" in reply.answer.message
        assert (client.counters.unavailable, client.counters.bad_answers) == (1, 0)


async def test_a_no_responders_status_answers_only_the_ops_of_its_own_request(
    nats_server: NatsServer,
) -> None:
    """A shard down when request 0 went out and back before a later request: the bus's
    "no responders" status for request 0, reaching the edge after the later request went
    out, answers request 0's op and leaves the later one's waiting for the shard's
    answer."""
    shard_side = await nats.connect(nats_server.url)
    delivered: list[Msg] = []

    async def note(msg: Msg) -> None:
        delivered.append(msg)

    try:
        async with running(nats_server.url, ack_timeout=30.0) as client:
            await client.link.wait_connected()
            first = TimedReply()
            submit(client, "acct", "p-0", first)  # request 0: no shard listens
            await eventually(lambda: first.answer is not None, "request 0's status")
            await shard_side.subscribe(SUBJECTS.ops(0), cb=note)
            await shard_side.flush()
            # The bus may answer a request or two "no responders" until the edge's
            # connection sees the shard's interest: one op per request until one arrives.
            later: list[TimedReply] = []
            while not delivered:
                reply = TimedReply()
                later.append(reply)
                submit(client, "acct", f"p-{len(later)}", reply)
                await eventually(
                    lambda: bool(delivered) or later[-1].answer is not None, "delivered or refused"
                )
            waiting, position_id = later[-1], f"p-{len(later)}"
            subject = delivered[0].reply
            assert subject.endswith(f".{len(later)}"), "the request's number ends its subject"
            # The status of request 0 as the bus hands it over, arriving late (its copy
            # already answered request 0's op).
            late_status = Msg(
                client.link.client,  # type: ignore[arg-type]
                subject=f"{subject.rpartition('.')[0]}.0",
                headers={Header.STATUS: NO_RESPONDERS_STATUS},
            )
            await client._on_answers(late_status)
            assert waiting.answer is None, "a later request's op was answered by request 0's"
            ((n, _),) = decode_request(delivered[0].data).ops
            await shard_side.publish(subject, encode_answers([(n, stored(position_id))]))
            await eventually(lambda: waiting.answer is not None, "the later request's answer")
        assert isinstance(first.answer, RequestError)
        assert "(NoRespondersError)" in first.answer.message
        assert waiting.answer == stored(position_id)
        assert (client.counters.unavailable, client.counters.acks) == (len(later), 1)
    finally:
        await shard_side.close()


async def test_an_op_made_while_the_bus_is_down_is_answered_once_and_its_retry_acked(
    tmp_path: Path,
) -> None:
    """The bus goes away with an op in flight and comes back: the op gets exactly one
    answer (its ack, or ``storage_unavailable`` if the shard had not resubscribed when
    the request came through), and the same op sent again gets the ack."""
    ((account,),) = accounts_of_shards(1)
    with NatsServer() as bus:
        async with ingest(bus.url, BTC):
            shard = await start_shard(
                settings_for(sqlite(tmp_path / "pos.db")), place(bus.url, shards=1)
            )
            try:
                await eventually(lambda: bool(shard.running.registry.status(BTC)), "BTC known")
                async with running(bus.url, ack_timeout=5.0) as client:
                    await client.link.wait_connected()
                    first = TimedReply()
                    submit(client, account, "p-1", first)
                    await eventually(lambda: first.answer is not None, "the first ack")
                    assert isinstance(first.answer, Position)

                    bus.kill()
                    await eventually(lambda: not client.link.connected, "the edge saw it go")
                    during = TimedReply()
                    submit(client, account, "p-2", during)
                    await asyncio.sleep(0.3)
                    assert during.answer is None, "answered while the bus was down"
                    bus.start()
                    await eventually(lambda: during.answer is not None, "the answer")

                    retry = TimedReply()
                    for _ in range(40):  # until the shard is back on the bus
                        retry = TimedReply()
                        submit(client, account, "p-2", retry)
                        await eventually(lambda: retry.answer is not None, "the retry's answer")  # noqa: B023
                        if isinstance(retry.answer, Position):
                            break
                        await asyncio.sleep(0.25)
                    assert isinstance(retry.answer, Position), retry.answer
                    if isinstance(during.answer, Position):
                        assert during.answer == retry.answer
                    else:
                        assert isinstance(during.answer, RequestError)
                        assert during.answer.code is ErrorCode.STORAGE_UNAVAILABLE
                    assert [p.id for p in shard.running.book.positions(account)] == ["p-1", "p-2"]
            finally:
                await shard.stop()
