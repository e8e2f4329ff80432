"""A positions shard on the bus: serves the position ops edges send it and publishes the
profit of the accounts edges watch.

``PositionShard`` answers the ops of ``<prefix>-positions.ops.<k>`` with the answers
of its ``PositionBook`` (the same book as one process: validation, idempotent retries,
the commit before the answer) and ``<prefix>-positions.watch.<k>`` by marking the account
(a ``ShardSubscriber`` joins the ``ProfitEngine`` as the account's subscriber) for
``WATCH_LEASE`` seconds from the last watch. Every edge with subscribers of the account
renews the watch every ``bus.position_client.RENEW_EVERY`` seconds; so a watch outlives
no edge by more than the lease, and a restarted shard learns every watch within one
renewal.

An op is a call, not a task: each op of a request is submitted to the book
(``PositionBook.submit_open``/``submit_close``) with a reply that queues its answer for
the request's answer subject (its ``answers_to``, else its reply subject), from the
commit, the refusal or the book's one ``ack_timeout`` timer. Everything the shard sends
(answers, profit batches) goes through one queue drained by one task (nats-py's publish
is a coroutine), in the order it was made. Answers for one subject gather in one message
(``_Answers``) until the task takes it: a commit's answers for an edge leave as one
message, however many ops and requests it held. An op's answer is queued at its
commit, before the profit engine hears of the position, so an edge gets the answer
before the position's first profit frame. Once the shard is stopped, answers still to
come are dropped (the change stays queued for storage; the edge's own timeout answers
its client).

The shard trusts the account names edges send (edges authenticate clients); it only
checks that the account is its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.exceptions import DecodeError
from bus.link import BusLink, raise_swallowed_cancellation
from bus.positions import (
    MAX_PER_MESSAGE,
    Answer,
    CloseOp,
    OpNumber,
    PositionOp,
    PositionSubjects,
    decode_request,
    decode_watch,
    encode_answers,
    encode_batch,
    shard_of,
)
from publish.channels import Topic
from publish.exceptions import RequestError
from publish.fanout import Fanout
from publish.position import Position
from publish.positions import PositionBook
from publish.profit import ProfitEngine
from publish.protocol import ErrorCode
from publish.storage.flusher import Commit, InsertOutcome, StorageHealth
from publish.storage.positions import PositionStore

log = logging.getLogger(__name__)

WATCH_LEASE = 5.0
"""Seconds a watch lasts without renewal."""
LEASE_CHECK = 1.0


class ShardSubscriber:
    """The profit engine's subscriber for one watched account: what a tick offers is
    published as one batch when the tick ends."""

    __slots__ = ("account", "_fanout", "_publish", "_pending")

    def __init__(self, account: str, fanout: Fanout, publish: Callable[[str, bytes], None]) -> None:
        self.account = account
        self._fanout = fanout
        self._publish = publish
        self._pending: dict[Topic, bytes] = {}

    def offer(self, key: Topic, message: bytes) -> None:
        if not self._pending:
            self._fanout.flush_soon(self)
        self._pending[key] = message

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        if messages and not self._pending:
            self._fanout.flush_soon(self)
        self._pending.update(messages)

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if pending:
            frames = ((key[1], frame) for key, frame in pending.items())
            self._publish(self.account, encode_batch(self.account, frames, whole=False))


class _Collector:
    """Collects what ``send_current`` offers: an account's whole state."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames: dict[Topic, bytes] = {}

    def offer(self, key: Topic, message: bytes) -> None:
        self.frames[key] = message

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        self.frames.update(messages)


@dataclass(slots=True)
class _Watch:
    subscriber: ShardSubscriber
    expires: float


class _Answers:
    """Answers queued for one reply subject, sent as one message when the send task
    takes them (up to ``MAX_PER_MESSAGE``)."""

    __slots__ = ("subject", "answers", "arrivals")

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.answers: list[tuple[OpNumber, Answer]] = []
        self.arrivals: list[int] = []
        """The monotonic ns each answered op came in."""


@dataclass(slots=True)
class ShardCounters:
    ops: int = 0
    acks: int = 0
    refusals: int = 0
    bad_requests: int = 0
    wrong_shard: int = 0
    watches: int = 0
    batches: int = 0


class PositionShard:
    """Shard ``shard`` of ``shards``; run ``run()`` in the node's task group beside
    ``link.run()``."""

    def __init__(
        self,
        book: PositionBook,
        profit: ProfitEngine,
        fanout: Fanout,
        link: BusLink,
        subjects: PositionSubjects,
        *,
        shard: int,
        shards: int,
        lease: float = WATCH_LEASE,
        monotonic: Callable[[], float] = time.monotonic,
        on_op: Callable[[int], None] | None = None,
    ) -> None:
        """``on_op(ns)``: told, per op answered, how long it took from its arrival to its
        answer's publish (the ``position_op`` stage)."""
        if not 0 <= shard < shards:
            raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
        self.book = book
        self.profit = profit
        self.fanout = fanout
        self.link = link
        self.subjects = subjects
        self.shard = shard
        self.shards = shards
        self.lease = lease
        self.monotonic = monotonic
        self.counters = ShardCounters()
        self._on_answered = on_op
        self._watches: dict[str, _Watch] = {}
        self._outgoing: deque[tuple[str, bytes] | _Answers] = deque()
        """What to send, in order: ``(subject, payload)`` or a reply subject's answers."""
        self._gathering: dict[str, _Answers] = {}
        """reply subject -> its answers queued and not yet taken by the send task."""
        self._wake = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()
        link.on_connect(self._subscribe)

    @property
    def ready(self) -> bool:
        """True once the shard listens for ops."""
        return self._ready.is_set()

    @property
    def watched(self) -> list[str]:
        return list(self._watches)

    async def wait_ready(self) -> None:
        """Until the shard listens for ops."""
        await self._ready.wait()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._send_loop(), name="shard:send")
            try:
                while True:
                    await asyncio.sleep(LEASE_CHECK)
                    self._expire(self.monotonic())
            finally:
                self._group = None

    # -- subscriptions ------------------------------------------------------------------

    async def _subscribe(self, client: Client) -> None:
        await client.subscribe(self.subjects.ops(self.shard), cb=self._on_op)
        await client.subscribe(self.subjects.watch(self.shard), cb=self._on_watch)
        await client.flush()
        self._ready.set()
        log.info("positions shard %d of %d serving", self.shard, self.shards)

    async def _on_op(self, msg: Msg) -> None:
        """Submit each op of the request with a reply that queues its answer for the
        request's ``answers_to`` (else ``msg.reply``): calls, no task per op (an answer
        comes from the book's commit or timer)."""
        if self._group is None or not msg.reply:
            return
        arrived = time.monotonic_ns()
        try:
            request = decode_request(msg.data)
        except DecodeError as exc:
            self.counters.bad_requests += 1
            log.warning("bad position request on %s: %s", msg.subject, exc)
            return
        answers_to = request.answers_to or msg.reply
        for n, op in request.ops:
            self._serve(_OpReply(self, answers_to, n, arrived), op)

    async def _on_watch(self, msg: Msg) -> None:
        try:
            account, whole = decode_watch(msg.data)
        except DecodeError as exc:
            self.counters.bad_requests += 1
            log.warning("bad watch request: %s", exc)
            return
        if shard_of(account, self.shards) != self.shard:
            self.counters.wrong_shard += 1
            return
        self.counters.watches += 1
        watch = self._watches.get(account)
        expires = self.monotonic() + self.lease
        if watch is None:
            subscriber = ShardSubscriber(account, self.fanout, self._publish_profit)
            self.profit.add(subscriber, account)
            self._watches[account] = _Watch(subscriber, expires)
            whole = True  # the edge may have missed frames while the shard did not mark it
        else:
            watch.expires = expires
        if msg.reply:
            frames: dict[Topic, bytes] = {}
            if whole:
                collector = _Collector()
                self.profit.send_current(collector, account)
                frames = collector.frames
            items = ((key[1], frame) for key, frame in frames.items())
            self._send(msg.reply, encode_batch(account, items, whole=whole))

    # -- ops ----------------------------------------------------------------------------

    def _serve(self, answer: _OpReply, op: PositionOp | DecodeError) -> None:
        self.counters.ops += 1
        if isinstance(op, DecodeError):
            self.counters.bad_requests += 1
            answer.refuse(RequestError(ErrorCode.BAD_REQUEST, str(op)))
            return
        owner = shard_of(op.account, self.shards)
        if owner != self.shard:
            self.counters.wrong_shard += 1
            answer.refuse(
                RequestError(
                    ErrorCode.STORAGE_UNAVAILABLE,
                    f"storage unavailable: the account belongs to shard {owner}, not "
                    f"{self.shard}: [bus].shards differs between nodes",
                )
            )
            return
        if isinstance(op, CloseOp):
            self.book.submit_close(op.account, op.position_id, reply=answer)
        else:
            self.book.submit_open(
                op.account,
                position_id=op.position_id,
                instrument=op.instrument,
                side=op.side,
                qty=op.qty,
                price=op.price,
                reply=answer,
            )

    def _answer(self, subject: str, n: OpNumber, answer: Answer, arrived: int) -> None:
        """Queue ``answer`` with the others for ``subject`` the send task has not taken."""
        if self._group is None:  # stopped: an op in flight then gets no answer
            return
        if isinstance(answer, RequestError):
            self.counters.refusals += 1
        else:
            self.counters.acks += 1
        gathering = self._gathering.get(subject)
        if gathering is None or len(gathering.answers) >= MAX_PER_MESSAGE:
            gathering = self._gathering[subject] = _Answers(subject)
            self._outgoing.append(gathering)
            self._wake.set()
        gathering.answers.append((n, answer))
        gathering.arrivals.append(arrived)

    # -- profit -------------------------------------------------------------------------

    def _publish_profit(self, account: str, payload: bytes) -> None:
        self.counters.batches += 1
        self._send(self.subjects.profit(account), payload)

    def _expire(self, now: float) -> None:
        for account, watch in list(self._watches.items()):
            if watch.expires <= now:
                del self._watches[account]
                self.profit.remove(watch.subscriber, account)

    # -- the one ordered way out --------------------------------------------------------

    def _send(self, subject: str, payload: bytes) -> None:
        self._outgoing.append((subject, payload))
        self._wake.set()

    async def _send_loop(self) -> None:
        outgoing = self._outgoing
        on_answered = self._on_answered
        while True:
            await self._wake.wait()
            self._wake.clear()
            client = self.link.client
            while outgoing:
                entry = outgoing.popleft()
                arrivals: list[int] = []
                if isinstance(entry, _Answers):
                    if self._gathering.get(entry.subject) is entry:
                        del self._gathering[entry.subject]
                    subject, payload = entry.subject, encode_answers(entry.answers)
                    arrivals = entry.arrivals
                else:
                    subject, payload = entry
                if client is None:
                    continue  # not connected yet: nobody can be waiting for it
                try:
                    await client.publish(subject, payload)
                except Exception as exc:  # noqa: BLE001 - a lost answer is a timeout at the edge
                    log.debug("bus publish failed: %s", exc)
                    continue
                if on_answered is not None and arrivals:
                    now = time.monotonic_ns()
                    for arrived in arrivals:
                        on_answered(now - arrived)
            raise_swallowed_cancellation()


class _OpReply:
    """The ``PositionReply`` of one op from the bus: its answer is queued, under the op's
    number, for the request's reply subject (sent by the shard's one sender, in order)."""

    __slots__ = ("_shard", "_subject", "_n", "_arrived")

    def __init__(self, shard: PositionShard, subject: str, n: OpNumber, arrived: int) -> None:
        self._shard = shard
        self._subject = subject
        self._n = n
        self._arrived = arrived
        """The monotonic ns the op came in (the ``position_op`` stage starts there)."""

    def acknowledge(self, position: Position) -> None:
        self._shard._answer(self._subject, self._n, position, self._arrived)

    def refuse(self, refusal: RequestError) -> None:
        self._shard._answer(self._subject, self._n, refusal, self._arrived)


class ShardStore:
    """A ``PositionStore`` that loads only the open positions of the shard's accounts
    (PostgreSQL is shared by every shard; a SQLite file holds one shard's anyway)."""

    def __init__(self, store: PositionStore, *, shard: int, shards: int) -> None:
        self._store = store
        self._shard = shard
        self._shards = shards

    @property
    def health(self) -> StorageHealth:
        return self._store.health

    def insert(self, position: Position, commit: Commit[InsertOutcome]) -> None:
        self._store.insert(position, commit)

    def write(self, position: Position, commit: Commit[None]) -> None:
        self._store.write(position, commit)

    async def load_open(self) -> list[Position]:
        return [
            position
            for position in await self._store.load_open()
            if shard_of(position.account, self._shards) == self._shard
        ]
