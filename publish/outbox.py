"""One connection's way out: a conflating outbox, its replies, and the writer behind them.

Market data reaches a connection from its crowd (``publish.fanout.Crowd``): in the
crowd's turn ``take_tick`` writes the crowd's frames, built once for all members of the
same wire format (``publish.wire``: ``?batch=1``, ``?ts=``, ``?compress=1``), in one
transport write, with no await and no task switch. Whatever cannot go out that way (the
socket is behind, or replies or the state sent on subscribe are queued first) is
``offer``ed: kept as the latest of its key (a dict), replacing an unsent older one
(conflation: seq jumps, nothing stale is ever written), and written by ``flush`` in its
turn; replies go at the start of the next turn (``Fanout.flush_first``), and a reply
that comes outside any request (a position's ack at its commit) goes at once when
nothing is queued ahead of it (``reply_now``).
When the socket is behind (its transport buffer above its high-water mark), nothing is
written: the outbox keeps conflating, and a writer task, started only then, waits for
the socket to drain and writes it. Memory per connection is therefore bounded by
construction: one pending message per key, plus the replies the request reader lets
pile up (``replies_pending``; it stops reading past its limit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from publish.channels import Topic
from publish.counters import Counters
from publish.fanout import Fanout, TickMessages
from publish.wire import PLAIN, WireFormat


class Sink(Protocol):
    """Where an outbox writes (``publish.server.WatchedConnection`` in the server)."""

    @property
    def writable(self) -> bool:
        """Open, and its write buffer is below the high-water mark."""
        ...

    def write_frames(self, frames: bytes) -> None:
        """Send websocket frames (``publish.protocol.text_frames``) now, without waiting;
        call only while ``writable``."""
        ...

    async def wait_writable(self) -> bool:
        """Wait until ``writable`` (True) or the connection is closing or closed (False)."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Outbox:
    """The queue of one connection; see the module docstring. The fan-out's ``Member``.

    ``attach`` gives it the task group its writer runs in (none: nothing is written past
    a full socket); ``stop`` ends writing for good (the connection is closing).
    """

    def __init__(self, sink: Sink, fanout: Fanout, *, wire: WireFormat = PLAIN) -> None:
        self._sink = sink
        self._fanout = fanout
        self._counters: Counters = fanout.counters
        self._wire = wire
        self._pending: dict[Topic, bytes] = {}
        self._replies: list[bytes] = []
        self._queued = False
        self._replies_queued = False
        """Queued with ``Fanout.flush_first`` (replies go ahead of market data's turns)."""
        self._tasks: asyncio.TaskGroup | None = None
        self._writer: asyncio.Task[None] | None = None
        self._stopped = False
        self._replied_now_in = -1
        """The ``Fanout.reply_round`` of this connection's last ``reply_now`` written at once."""
        self.replies_taken = asyncio.Event()
        """Set whenever queued replies were written (or never will be)."""

    @property
    def replies_pending(self) -> int:
        return len(self._replies)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def attach(self, tasks: asyncio.TaskGroup | None) -> None:
        """Run the writer in ``tasks`` from now on; ``None`` cancels a running one."""
        self._tasks = tasks
        if tasks is None and self._writer is not None:
            self._writer.cancel()

    def stop(self) -> None:
        """Write nothing more: the connection is closing. Wakes a waiting reader."""
        self._stopped = True
        self.replies_taken.set()

    # -- called by the engine -----------------------------------------------------------

    def offer(self, key: Topic, message: bytes) -> None:
        """Queue ``message`` as the latest of ``key``, replacing an unsent one; it is
        written in its turn (or, if the socket is behind, when it drains). O(1),
        never waits."""
        pending = self._pending
        if key in pending:
            self._counters.conflated += 1
        pending[key] = message
        if not self._queued:
            self._queued = True
            self._fanout.flush_soon(self)

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        """``offer`` each of ``messages`` in order, in one dict update. O(len(messages))."""
        pending = self._pending
        queued = len(pending) + len(messages)
        pending.update(messages)
        if len(pending) < queued:
            self._counters.conflated += queued - len(pending)
        if messages and not self._queued:
            self._queued = True
            self._fanout.flush_soon(self)

    def take_tick(self, tick: TickMessages) -> None:
        """Write the frames of the crowd's tick as they are (one write), or, when this
        connection is behind or has its own messages queued, take the messages in so
        that they conflate and keep their order. O(1) or O(messages)."""
        if self._queued or not self._sink.writable:
            self.offer_all(tick.messages)
            return
        count = len(tick.messages)
        counters = self._counters
        self._sink.write_frames(tick.frames(self._wire))
        counters.frames_sent += 1 if self._wire.batch else count
        counters.messages_sent += count

    def flush(self) -> None:
        """Write everything queued (replies first) if the socket takes it now; else leave
        it to the writer task. O(pending); one write."""
        self._replies_queued = False
        if not self._queued:
            return
        sink = self._sink
        if not sink.writable:
            self._start_writer()
            return
        self._queued = False
        pending = self._pending
        messages: Collection[bytes]
        if self._replies:
            messages, self._replies = self._replies, []
            messages.extend(pending.values())
            self.replies_taken.set()
        else:
            messages = pending.values()  # written before the outbox is cleared below
        count = len(messages)
        counters = self._counters
        wire = self._wire
        sink.write_frames(self._fanout.framing.frames(wire, messages))
        counters.frames_sent += 1 if wire.batch else count
        counters.messages_sent += count
        pending.clear()

    # -- called by the connection ---------------------------------------------------------

    def reply(self, message: bytes) -> None:
        """Queue a reply (ack, error, pong): it is written ahead of queued market data,
        after the request that caused it or at the start of the next turn of writes
        (``Fanout.flush_first``), whatever round of market data is going on. O(1)."""
        self._replies.append(message)
        self._queued = True
        if not self._replies_queued:
            self._replies_queued = True
            self._fanout.flush_first(self)

    def reply_now(self, message: bytes) -> None:
        """A reply that comes outside any request of this connection (a position op's ack
        or refusal, answered at its commit): written at once, as its own frame, when it
        is the connection's first of the commit's replies (``Fanout.reply_round``),
        nothing is queued ahead of it and the socket takes it; otherwise queued as
        ``reply``, so the connection's other replies of the commit go out together when
        the commit's replies are flushed (``Fanout.flush_replies``). O(len(message)).

        For the usual connection, with one op in a commit, writing at once saves the
        queue's round (its registration, the turn's flush, the frames' list): about
        12,000 of some 172,000 instructions an open in the single process (callgrind,
        ``python -m bench opcost``, alternated runs). A connection with many ops in one
        commit pays two ``write(2)`` for them instead of one per ack."""
        fanout = self._fanout
        if (
            self._queued
            or self._stopped
            or self._replied_now_in == fanout.reply_round
            or not self._sink.writable
        ):
            self.reply(message)
            return
        self._replied_now_in = fanout.reply_round
        self._sink.write_frames(fanout.framing.frame(self._wire, message))
        counters = self._counters
        counters.frames_sent += 1
        counters.messages_sent += 1

    def drop(self, keys: Iterable[Topic], *, channels: Iterable[object] = ()) -> None:
        """Forget what is queued under ``keys`` and every message of ``channels``."""
        pending = self._pending
        for key in keys:
            pending.pop(key, None)
        whole = set(channels)
        if whole:
            for key in [key for key in pending if key[0] in whole]:
                del pending[key]

    def clear(self) -> None:
        self._pending.clear()

    # -- the writer -------------------------------------------------------------------------

    def _start_writer(self) -> None:
        if self._writer is None and self._tasks is not None and not self._stopped:
            self._writer = self._tasks.create_task(self._write_when_drained())

    async def _write_when_drained(self) -> None:
        """The writer: while something is queued, wait for the socket, then flush."""
        try:
            while self._queued:
                if not await self._sink.wait_writable():
                    self.stop()  # nothing more can be written
                    return
                self.flush()
        finally:
            self._writer = None
