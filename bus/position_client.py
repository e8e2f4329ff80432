"""An edge's way to the positions shards: the ``PositionService`` and the ``ProfitFeed``
of an edge, over the bus.

``ShardClient.submit_open``/``submit_close`` (the ``PositionService`` of the edge's
sessions) send the op to the shard owning the account (``bus.positions.shard_of``) by
request/reply, in a task of the client's own, and give the op's reply the shard's
answer: the position as stored once the shard committed it, or the shard's refusal
with the same ``RequestError`` code as one process. No answer within
``ack_timeout`` (the shard is down, slow, or the bus is) is ``storage_unavailable``:
the op may have committed or may still commit, and sending the very same op again (the
same position id) gets the same acknowledgement, as in one process.

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
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.exceptions import DecodeError
from bus.link import BusLink
from bus.positions import (
    CloseOp,
    OpenOp,
    PositionOp,
    PositionSubjects,
    ProfitBatch,
    decode_answer,
    decode_batch,
    encode_op,
    encode_watch,
    shard_of,
)
from publish.exceptions import RequestError
from publish.position import Position
from publish.positions import Acknowledge, PositionReply
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
        self._asking: set[asyncio.Task[None]] = set()
        """The ops submitted and not answered yet (cancelled when ``run`` ends)."""
        self._answering: dict[str, dict[str, int]] = {}
        """account -> position id -> ops of it waiting for their answer."""
        self._held: dict[str, deque[ProfitBatch]] = {}

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
        task = asyncio.get_running_loop().create_task(self._answer(op, reply))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    async def _answer(self, op: PositionOp, reply: PositionReply) -> None:
        try:
            await self._send(op, reply.acknowledge)
        except RequestError as refusal:
            reply.refuse(refusal)
        if self._after_answer is not None:
            self._after_answer()

    async def _send(self, op: PositionOp, acknowledge: Acknowledge) -> Position:
        waiting = self._answering.setdefault(op.account, {})
        waiting[op.position_id] = waiting.get(op.position_id, 0) + 1
        try:
            return await self._ask(op, acknowledge)
        finally:
            left = waiting[op.position_id] - 1
            if left:
                waiting[op.position_id] = left
            else:
                del waiting[op.position_id]
                if not waiting:
                    del self._answering[op.account]
            self._release(op.account)

    async def _ask(self, op: PositionOp, acknowledge: Acknowledge) -> Position:
        self.counters.ops += 1
        shard = shard_of(op.account, self.shards)
        try:
            async with asyncio.timeout(self.ack_timeout):
                client = await self.link.wait_connected()  # a bus outage counts in the wait
                msg = await client.request(
                    self.subjects.ops(shard), encode_op(op), timeout=self.ack_timeout
                )
            answer = decode_answer(msg.data)
        except (nats.errors.Error, OSError, TimeoutError, DecodeError) as exc:
            self.counters.unavailable += 1
            raise RequestError(
                ErrorCode.STORAGE_UNAVAILABLE,
                f"storage unavailable: positions shard {shard} did not answer within "
                f"{self.ack_timeout:g}s ({type(exc).__name__}); the op may still be "
                "stored: send the same request again for its acknowledgement",
            ) from None
        if isinstance(answer, RequestError):
            self.counters.refusals += 1
            raise answer
        self.counters.acks += 1
        acknowledge(answer)
        return answer

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
        """Keep the profit subscriptions equal to the wanted accounts, renewing watches."""
        try:
            await self._keep_subscriptions()
        finally:
            for task in self._asking:
                task.cancel()

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
