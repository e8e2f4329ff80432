"""An edge's way to the positions shards: the ``PositionService`` and the ``ProfitFeed``
of an edge, over the bus.

``ShardClient.submit_open``/``submit_close`` (the ``PositionService`` of the edge's
sessions) send the op to the shard owning the account (``bus.positions.shard_of``) and
give the op's reply the shard's answer: the position as stored once the shard committed
it, or the shard's refusal with the same ``RequestError`` code as one process. No answer
within ``ack_timeout`` (the shard is down, slow, or the bus is) is
``storage_unavailable``: the op may have committed or may still commit, and sending the
very same op again (the same position id) gets the same acknowledgement, as in one
process.

An op is a call, not a task: it is numbered and joins the request gathering for its
shard, which one send task publishes (nats-py's publish is a coroutine). So the ops the
edge's clients make while the task waits for its turn of the loop travel as one request.
Its answers go to ``<inbox>.<shard>`` (the request's ``answers_to``, the same for every
request to that shard, so that a shard's answers of one commit come back together,
several requests' to a message) and its reply subject is ``<inbox>.<shard>.<request>``;
one subscription (``<inbox>.>``) takes both. One timer per request answers what is left
of it at ``ack_timeout``. A request no shard was subscribed to gets the bus's "no
responders" status at once, on its own reply subject: its ops are then answered
``storage_unavailable`` without waiting for their timeout, and the ops of other requests
(a later one may have reached the shard once it was back) wait for their answers.

As a ``ProfitFeed`` it subscribes to ``<prefix>-positions.profit.<account>`` when the
relay's first subscriber of an account arrives, asks the owning shard to watch the
account (its answer is the account's whole state), renews the watch every
``RENEW_EVERY`` seconds while subscribed (a restarted shard answers with the whole state
again), and unsubscribes when the last subscriber leaves. A batch whose account is not
the one subscribed is dropped: subjects map some characters to ``_``, the payload names
the exact account.

Ack before profit, as in one process: the shard sends an op's answer before the
position's first profit frame, but the edge reads answers and profit on different
subscriptions. So while an op of a position is waiting for its answer, the account's
batches that carry that position (and every later batch of the account, to keep their
order) are held, and handed on right after the answer was acknowledged (or refused).
Then ``after_answer`` runs: the edge writes the replies queued (the answer, and what
was held) at once, not after the loop's next poll for sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from bus.exceptions import DecodeError
from bus.link import BusLink, raise_swallowed_cancellation
from bus.positions import (
    MAX_PER_MESSAGE,
    Answer,
    CloseOp,
    OpenOp,
    OpNumber,
    PositionOp,
    PositionSubjects,
    ProfitBatch,
    decode_answers,
    decode_batch,
    encode_ops,
    encode_watch,
    shard_of,
)
from publish.exceptions import RequestError
from publish.positions import PositionReply
from publish.protocol import ErrorCode

log = logging.getLogger(__name__)

RENEW_EVERY = 1.0
"""Seconds between two watches of an account (the shard's lease is longer)."""
WATCH_TIMEOUT = 1.0

ProfitSink = Callable[[str, ProfitBatch], None]
"""Where batches go: ``(account, batch)`` (the relay's ``receive``)."""


@dataclass(slots=True)
class ClientCounters:
    ops: int = 0
    acks: int = 0
    refusals: int = 0
    unavailable: int = 0
    """Ops answered ``storage_unavailable`` because no shard answered in time."""
    batches: int = 0
    dropped_batches: int = 0
    watch_failures: int = 0
    late_answers: int = 0
    """Answers that came after their op was answered ``storage_unavailable``."""
    bad_answers: int = 0
    """Answer messages that did not decode (their ops are answered at their timeout)."""


@dataclass(slots=True)
class _Waiting:
    """An op sent (or about to be) and not answered yet."""

    op: PositionOp
    reply: PositionReply
    shard: int
    deadline: float
    """Loop time past which it is answered ``storage_unavailable``."""
    request: int
    """The number of the request it travels in."""


@dataclass(slots=True)
class _Request:
    """The ops gathering for one shard until the send task takes them."""

    shard: int
    number: int
    numbers: list[OpNumber] = field(default_factory=list)


class ShardClient:
    """Run ``run()`` in the edge's task group beside ``link.run()``; give the relay's
    ``receive`` to ``deliver_to`` before the first watch."""

    def __init__(
        self,
        link: BusLink,
        subjects: PositionSubjects,
        *,
        shards: int,
        ack_timeout: float,
        after_answer: Callable[[], None] | None = None,
    ) -> None:
        if shards < 1 or ack_timeout <= 0:
            raise ValueError("shards must be >= 1 and ack_timeout positive")
        self.link = link
        self.subjects = subjects
        self.shards = shards
        self.ack_timeout = ack_timeout
        self.counters = ClientCounters()
        self._after_answer = after_answer
        self._sink: ProfitSink | None = None
        self._wanted: set[str] = set()
        self._subscriptions: dict[str, Subscription] = {}
        self._changed = asyncio.Event()
        self._renewals: set[asyncio.Task[None]] = set()
        self._waiting: dict[OpNumber, _Waiting] = {}
        """The ops submitted and not answered yet, by number."""
        self._next_number = 0
        self._next_request = 0
        self._outgoing: deque[_Request] = deque()
        self._gathering: dict[int, _Request] = {}
        """shard -> its request the send task has not taken yet."""
        self._wake = asyncio.Event()
        self._inbox: str | None = None
        """The reply subject of this edge's ops, once subscribed."""
        self._inbox_ready = asyncio.Event()
        self._stopped = False
        self._answering: dict[str, dict[str, int]] = {}
        """account -> position id -> ops of it waiting for their answer."""
        self._held: dict[str, deque[ProfitBatch]] = {}
        link.on_connect(self._subscribe_inbox)

    def deliver_to(self, sink: ProfitSink) -> None:
        self._sink = sink

    # -- PositionService ------------------------------------------------------------------

    def submit_open(
        self,
        account: str,
        *,
        position_id: str,
        instrument: str,
        side: str,
        qty: str,
        price: str,
        reply: PositionReply,
    ) -> None:
        op = OpenOp(
            account=account,
            position_id=position_id,
            instrument=instrument,
            side=side,
            qty=qty,
            price=price,
        )
        self._submit(op, reply)

    def submit_close(self, account: str, position_id: str, *, reply: PositionReply) -> None:
        self._submit(CloseOp(account=account, position_id=position_id), reply)

    def _submit(self, op: PositionOp, reply: PositionReply) -> None:
        """Number the op, hold the account's profit batches that carry its position, and
        add it to its shard's gathering request. O(1)."""
        self.counters.ops += 1
        loop = asyncio.get_running_loop()
        n = self._next_number
        self._next_number += 1
        shard = shard_of(op.account, self.shards)
        deadline = loop.time() + self.ack_timeout
        request = self._gathering.get(shard)
        if request is None or len(request.numbers) >= MAX_PER_MESSAGE:
            request = self._gathering[shard] = _Request(shard, self._next_request)
            self._next_request += 1
            self._outgoing.append(request)
            self._wake.set()
            loop.call_at(deadline, self._expire, request.numbers)
        request.numbers.append(n)
        self._waiting[n] = _Waiting(op, reply, shard, deadline, request.number)
        waiting = self._answering.setdefault(op.account, {})
        waiting[op.position_id] = waiting.get(op.position_id, 0) + 1

    async def _send_loop(self) -> None:
        """Publish each request once the inbox is subscribed; a request whose ops were all
        answered meanwhile (their timeout) is not sent."""
        outgoing = self._outgoing
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._inbox_ready.wait()
            client, inbox = self.link.client, self._inbox
            assert client is not None and inbox is not None
            while outgoing:
                request = outgoing.popleft()
                if self._gathering.get(request.shard) is request:
                    del self._gathering[request.shard]
                sending = [(n, self._waiting[n]) for n in request.numbers if n in self._waiting]
                if not sending:
                    continue
                ops = [(n, waiting.op) for n, waiting in sending]
                answers_to = f"{inbox}.{request.shard}"
                try:
                    await client.publish(
                        self.subjects.ops(request.shard),
                        encode_ops(ops, answers_to=answers_to),
                        reply=f"{answers_to}.{request.number}",
                    )
                except Exception as exc:  # noqa: BLE001 - every failure is the same answer
                    self._unavailable([n for n, _ in ops], type(exc).__name__)
            raise_swallowed_cancellation()

    async def _subscribe_inbox(self, client: Client) -> None:
        inbox = client.new_inbox()
        await client.subscribe(f"{inbox}.>", cb=self._on_answers)
        self._inbox = inbox
        self._inbox_ready.set()

    async def _on_answers(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
            self._no_responders(msg.subject)
            return
        try:
            answers = decode_answers(msg.data)
        except DecodeError as exc:
            self.counters.bad_answers += 1
            log.warning("bad answers from a positions shard: %s", exc)
            return
        for n, answer in answers:
            waiting = self._waiting.pop(n, None)
            if waiting is None:
                self.counters.late_answers += 1
                continue
            if isinstance(answer, RequestError):
                self.counters.refusals += 1
            else:
                self.counters.acks += 1
            self._settle(waiting, answer)
        if self._after_answer is not None:
            self._after_answer()

    def _no_responders(self, subject: str) -> None:
        """No shard was subscribed when the request with the reply subject
        ``<inbox>.<shard>.<request>`` was published: answer its ops still waiting (the
        shard is down; the retry of an op that reached it before it went gets the ack)."""
        request = subject.rpartition(".")[2]
        if not request.isdecimal():
            self.counters.bad_answers += 1
            return
        number = int(request)
        self._unavailable(
            [n for n, w in self._waiting.items() if w.request == number], "NoRespondersError"
        )

    def _expire(self, numbers: list[OpNumber]) -> None:
        """A request's timer: answer its ops past their deadline ``storage_unavailable``;
        wait again for the ones that joined it later."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        late: list[OpNumber] = []
        left: list[OpNumber] = []
        next_deadline = float("inf")
        for n in numbers:
            waiting = self._waiting.get(n)
            if waiting is None:
                continue  # answered
            if waiting.deadline <= now:
                late.append(n)
            else:
                left.append(n)
                next_deadline = min(next_deadline, waiting.deadline)
        if left:
            loop.call_at(next_deadline, self._expire, left)
        if late:
            self._unavailable(late, "TimeoutError")

    def _unavailable(self, numbers: list[OpNumber], why: str) -> None:
        """Answer these ops ``storage_unavailable`` (sending failed, or no answer in time)."""
        if self._stopped:
            return  # the edge's sessions are closing
        for n in numbers:
            waiting = self._waiting.pop(n, None)
            if waiting is None:
                continue
            self.counters.unavailable += 1
            self._settle(
                waiting,
                RequestError(
                    ErrorCode.STORAGE_UNAVAILABLE,
                    f"storage unavailable: positions shard {waiting.shard} did not answer "
                    f"within {self.ack_timeout:g}s ({why}); the op may still be stored: "
                    "send the same request again for its acknowledgement",
                ),
            )
        if self._after_answer is not None:
            self._after_answer()

    def _settle(self, waiting: _Waiting, answer: Answer) -> None:
        """Give the op's reply its answer, then hand on the profit batches it held."""
        op = waiting.op
        if isinstance(answer, RequestError):
            waiting.reply.refuse(answer)
        else:
            waiting.reply.acknowledge(answer)
        held = self._answering[op.account]
        left = held[op.position_id] - 1
        if left:
            held[op.position_id] = left
        else:
            del held[op.position_id]
            if not held:
                del self._answering[op.account]
        self._release(op.account)

    # -- ProfitFeed -----------------------------------------------------------------------

    def watch(self, account: str) -> None:
        self._wanted.add(account)
        self._changed.set()

    def unwatch(self, account: str) -> None:
        self._wanted.discard(account)
        self._changed.set()

    @property
    def watching(self) -> list[str]:
        """Accounts whose profit subject this edge is subscribed to."""
        return list(self._subscriptions)

    async def run(self) -> None:
        """Send the ops; keep the profit subscriptions equal to the wanted accounts,
        renewing watches. Ops unanswered when it ends get no answer (the edge stops)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send_loop(), name="edge:position-ops")
                await self._keep_subscriptions()
        finally:
            self._stopped = True

    async def _keep_subscriptions(self) -> None:
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + RENEW_EVERY
        while True:
            try:
                async with asyncio.timeout_at(renew_at):
                    await self._changed.wait()
            except TimeoutError:
                pass
            self._changed.clear()
            client = self.link.client
            if client is None or not client.is_connected:
                renew_at = loop.time() + RENEW_EVERY / 4
                continue
            await self._reconcile(client)
            if loop.time() >= renew_at:
                renew_at = loop.time() + RENEW_EVERY
                for account in list(self._subscriptions):
                    task = asyncio.create_task(self._watch(client, account, whole=False))
                    self._renewals.add(task)
                    task.add_done_callback(self._renewals.discard)

    async def _reconcile(self, client: Client) -> None:
        for account in list(self._subscriptions):
            if account not in self._wanted:
                subscription = self._subscriptions.pop(account)
                self._held.pop(account, None)
                try:
                    await subscription.unsubscribe()
                except nats.errors.Error as exc:
                    log.debug("unsubscribe from %s failed: %s", account, exc)
        for account in list(self._wanted):
            if account in self._subscriptions:
                continue
            try:
                self._subscriptions[account] = await client.subscribe(
                    self.subjects.profit(account), cb=self._receiver(account)
                )
            except nats.errors.Error as exc:
                log.warning("profit subscription of %s failed: %s", account, exc)
                continue
            await self._watch(client, account, whole=True)

    async def _watch(self, client: Client, account: str, *, whole: bool) -> None:
        shard = shard_of(account, self.shards)
        try:
            msg = await client.request(
                self.subjects.watch(shard),
                encode_watch(account, whole=whole),
                timeout=WATCH_TIMEOUT,
            )
            batch = decode_batch(msg.data)
        except (nats.errors.Error, OSError, TimeoutError, DecodeError) as exc:
            self.counters.watch_failures += 1
            log.debug("watch of %s on shard %d failed: %s", account, shard, exc)
            return
        self._deliver(account, batch)

    def _receiver(self, account: str) -> Callable[[Msg], Coroutine[Any, Any, None]]:
        async def receive(msg: Msg) -> None:
            try:
                batch = decode_batch(msg.data)
            except DecodeError as exc:
                self.counters.dropped_batches += 1
                log.warning("bad profit batch on %s: %s", msg.subject, exc)
                return
            self._deliver(account, batch)

        return receive

    def _deliver(self, account: str, batch: ProfitBatch) -> None:
        if batch.account != account or account not in self._subscriptions or self._sink is None:
            self.counters.dropped_batches += 1
            return
        held = self._held.get(account)
        if held is not None or self._waits(account, batch):
            if held is None:
                held = self._held[account] = deque()
            held.append(batch)
            return
        self.counters.batches += 1
        self._sink(account, batch)

    def _waits(self, account: str, batch: ProfitBatch) -> bool:
        """The batch carries a position whose op is waiting for its answer."""
        waiting = self._answering.get(account)
        return waiting is not None and any(key in waiting for key, _ in batch.frames)

    def _release(self, account: str) -> None:
        """Hand on the account's held batches, up to one that must still wait."""
        held = self._held.get(account)
        if held is None:
            return
        while held and not self._waits(account, held[0]):
            batch = held.popleft()
            if account in self._subscriptions and self._sink is not None:
                self.counters.batches += 1
                self._sink(account, batch)
        if not held:
            del self._held[account]
