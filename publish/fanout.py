"""The fan-out engine: channel sources -> one encoded message per change -> every subscriber.

Every channel is a ``publish.channels.ChannelSource``: it watches its values (registry
listeners only mark a key dirty, O(1), nothing is encoded there) and asks for a tick.
The first request of an event-loop iteration schedules one publish tick with
``loop.call_soon``, so everything the feeds applied in that iteration goes out together
in the next one: the lowest latency the loop allows, and natural batching. In the tick
every source encodes each dirty key's latest value ONCE and offers the same bytes to
every subscriber; nothing in a tick awaits, so a slow client can never delay the others.

Sessions subscribed to exactly the same subscriptions (channel, key and parameter, such
as a book's depth) form a ``Crowd`` of at most ``crowd_size`` members (more sessions
with the same subscriptions make several crowds), and sources see crowds, never
sessions: the tick offers each message to a crowd once, frames the crowd's messages
once when it flushes the crowd, and writes those same bytes to every member whose
socket takes them (one write per member). A member that is behind, or has replies or
state of its own queued, takes the messages into its own conflating outbox instead
(``publish.outbox.Outbox``). A session with subscriptions nobody else has is a crowd of
one. Which crowd a session is in is its subscription state: the one place it is kept.

Flushing takes turns. What a tick offered is queued, crowd by crowd, behind whatever
earlier ticks left, and a tick flushes from the front of that queue until it has
written to ``turn_size`` subscribers (a whole crowd counts all its members), then hands
the loop back and asks for another tick. A change that arrives meanwhile is offered to
the crowds still waiting (it joins what they will write, conflated by key) and queued
for those already written. So a large audience is written in turns of a few
milliseconds each, feeds and requests run between the turns, and a change reaches
every subscriber within one round of the queue, instead of waiting for the round in
progress to finish before its own round starts. Sessions with replies queued
(``flush_first``: a position's ack) go at the start of the next turn, ahead of the
round, or at once when a commit or a shard's answer asks (``flush_replies``). A
subscription change between turns loses nothing and sends nothing twice: a session
leaving a crowd that waits takes what the crowd holds, and a crowd that waits is
written before a session joins it.

Cost per tick: O(dirty keys) encodes (book: per distinct subscribed depth) + O(sum of
their crowds) offers; per flushed crowd, one framing + one write per member touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from publish.channels import (
    CHANNEL_WIDE,
    ChannelSource,
    MetricsChannel,
    MetricsProvider,
    Spec,
    Subscriber,
    Tick,
    Topic,
    market_data,
)
from publish.counters import Counters
from publish.protocol import Channel
from publish.wire import Framing, WireFormat

log = logging.getLogger(__name__)

CROWD_SIZE = 256
"""Members per crowd at most: a crowd is flushed in one go."""
TURN_SIZE = 256
"""Subscribers a tick writes to before it hands the loop back: one full crowd, or many
sessions and small crowds (1-3 ms of writes on a 2-core VM)."""

__all__ = [
    "CHANNEL_WIDE",
    "Counters",
    "Crowd",
    "Fanout",
    "Member",
    "MetricsProvider",
    "Spec",
    "TickMessages",
    "Topic",
    "WrittenHook",
]

WrittenHook = Callable[[Iterable[BookSnapshot], int], None]
"""Told once every crowd a tick offered to has been flushed (by that tick or by later
ones, in turn): the snapshots whose bbo/book messages the tick delivered, and the time
(ns, ``Fanout.clock``) by which their frames were written to every subscriber whose
socket took them (publish and end-to-end latency; conflated ones are written later)."""


class TickMessages:
    """One crowd's messages of one tick, framed once for all its members, lazily: only
    in the wire formats some member writes (``publish.wire``: one frame per message or
    one batch frame, a time format, compressed or not)."""

    __slots__ = ("_formed", "_framing", "messages")

    def __init__(self, messages: dict[Topic, bytes], framing: Framing) -> None:
        self.messages = messages
        self._framing = framing
        self._formed: list[tuple[WireFormat, bytes]] = []

    def frames(self, wire: WireFormat) -> bytes:
        """The messages as ``wire``'s frames, built on the first call for that format.
        O(1) after it: one identity check per format in use (usually one)."""
        for formed, frames in self._formed:
            if formed is wire:
                return frames
        frames = self._framing.frames(wire, self.messages.values())
        self._formed.append((wire, frames))
        return frames


class Member(Subscriber, Protocol):
    """A session as the engine sees it: a subscriber (its own outbox) that can also take a
    crowd's tick, and be flushed when the tick that offered to it ends."""

    def take_tick(self, tick: TickMessages) -> None: ...

    def flush(self) -> None: ...


class Flushable(Protocol):
    def flush(self) -> None: ...


class Crowd:
    """Members (at most the fan-out's ``crowd_size``) subscribed to exactly ``specs``: one
    outbox for all of them.

    ``offer`` is one dict store (the first one queues the crowd for flushing); ``flush``
    hands the same ``TickMessages`` to every member.
    """

    __slots__ = ("_fanout", "_outbox", "members", "specs")

    def __init__(self, specs: frozenset[Spec], fanout: Fanout) -> None:
        self.specs = specs
        self.members: set[Member] = set()
        self._fanout = fanout
        self._outbox: dict[Topic, bytes] = {}

    def offer(self, key: Topic, message: bytes) -> None:
        outbox = self._outbox
        if not outbox:
            self._fanout.flush_soon(self)
        outbox[key] = message

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        if not messages:
            return
        if not self._outbox:
            self._fanout.flush_soon(self)
        self._outbox.update(messages)

    def hand_over(self, member: Member) -> None:
        """``member`` is leaving these specs: what was offered here and not written yet
        becomes its own (its outbox conflates it, and the subscription change then drops
        what it no longer holds). A crowd of one keeps none of it. O(pending)."""
        if not self._outbox:
            return
        member.offer_all(self._outbox)
        if len(self.members) == 1:
            self._outbox = {}

    def flush(self) -> None:
        if not self._outbox:
            return
        tick = TickMessages(self._outbox, self._fanout.framing)
        self._outbox = {}
        for member in self.members:
            try:
                member.take_tick(tick)
            except Exception:  # one client's failure must not stop the others' delivery
                self._fanout.write_failed()


class Fanout:
    """Routes channel sources' messages to subscribers. One per server, on the event loop.

    ``clock`` (ns since the epoch) stamps ``ts_send``: the time of the tick that encoded a
    message (or of the subscribe that sent the current state), once for all its copies.
    ``book_depth`` is the deepest ``book`` a client may ask for: the levels per side the
    feeds capture into snapshots (``[book].capture_depth``). ``metrics`` provides the
    ``metrics`` channel's content (default: ``stats()``), sent every
    ``metrics_interval`` seconds (``None``: on ``publish_metrics`` calls only).
    ``crowd_size``: members per crowd at most; ``turn_size``: subscribers a tick writes
    to before it hands the loop back (it flushes one crowd or session at least).
    """

    def __init__(
        self,
        registry: BookRegistry,
        *,
        clock: Callable[[], int] = time.time_ns,
        book_depth: int = 25,
        metrics: MetricsProvider | None = None,
        metrics_interval: float | None = 1.0,
        on_written: WrittenHook | None = None,
        crowd_size: int = CROWD_SIZE,
        turn_size: int = TURN_SIZE,
    ) -> None:
        if crowd_size < 1 or turn_size < 1:
            raise ValueError("crowd_size and turn_size must be at least 1")
        self.registry = registry
        self.clock = clock
        self.book_depth = book_depth
        self.counters = Counters()
        self.framing = Framing()
        """Frames messages in each connection's wire format, memoized per tick."""
        self.on_written = on_written
        self._crowd_size = crowd_size
        self._turn_size = turn_size
        self._crowds: dict[frozenset[Spec], list[Crowd]] = {}
        """The crowds of each distinct subscription set."""
        self._crowd_of: dict[Member, Crowd] = {}
        self._to_flush: deque[Flushable] = deque()
        self._replies_first: deque[Flushable] = deque()
        """Sessions with replies queued (``flush_first``): flushed at the start of a turn."""
        self.reply_round = 0
        """Counts ``flush_replies`` calls: the replies one commit answers (on an edge, one
        message of a shard's answers) share a round (``publish.outbox.Outbox.reply_now``)."""
        self._queued = 0
        """Flushes ever queued (``_to_flush`` appends)."""
        self._flushed = 0
        """Flushes ever taken off the queue: all queued up to this count have run."""
        self._unwritten: deque[tuple[int, Iterable[BookSnapshot]]] = deque()
        """A measured tick's delivered snapshots, with the ``_queued`` count by which
        everything it offered was queued: written once ``_flushed`` reaches it."""
        self._sources: dict[Channel, ChannelSource] = {}
        self._tick_pending = False
        for source in market_data(
            registry,
            self,
            book_depth=book_depth,
            metrics=metrics or self.stats,
            metrics_interval=metrics_interval,
        ):
            self.add_source(source)

    def stats(self) -> dict[str, object]:
        """The counters and subscription gauges as a dict (the default ``metrics``
        content). O(fields + crowds)."""
        return {
            **dataclasses.asdict(self.counters),
            "subscriptions": self.subscriptions(),
            "crowds": self.crowds(),
        }

    # -- channels -----------------------------------------------------------------------

    def add_source(self, source: ChannelSource) -> None:
        """Let ``source`` serve its channel; a tick publishes sources in the order added."""
        if source.channel in self._sources:
            raise ValueError(f"channel {source.channel.value} already has a source")
        self._sources[source.channel] = source

    def source(self, channel: Channel) -> ChannelSource | None:
        """The source serving ``channel`` (``None``: this server does not carry it)."""
        return self._sources.get(channel)

    def publish_metrics(self) -> None:
        """Send the ``metrics`` channel now (for a provider that reports on its own clock,
        with ``metrics_interval=None``)."""
        source = self._sources[Channel.METRICS]
        assert isinstance(source, MetricsChannel)
        source.publish_now()

    # -- subscriptions ----------------------------------------------------------------------

    def held(self, member: Member) -> frozenset[Spec]:
        """Every subscription of ``member``. O(1)."""
        crowd = self._crowd_of.get(member)
        return frozenset() if crowd is None else crowd.specs

    def subscribe(self, member: Member, specs: Iterable[Spec]) -> None:
        """Add ``member`` to ``specs`` (granted by their sources, not held yet) and offer
        it their current state. O(subscriptions held) to move it to its new crowd."""
        new = list(dict.fromkeys(specs))  # in request order: the order of current state
        if not new:
            return
        crowd = self._crowd_of.get(member)
        held = crowd.specs if crowd is not None else frozenset()
        self._move(member, crowd, held | frozenset(new))
        for channel, key, parameter in new:
            self._sources[channel].send_current(member, key, parameter)

    def unsubscribe(self, member: Member, topics: Iterable[Topic]) -> None:
        """Remove ``member`` from ``topics`` (missing ones are ignored). O(held)."""
        crowd = self._crowd_of.get(member)
        leaving = set(topics)
        if crowd is not None and leaving:
            kept = frozenset(spec for spec in crowd.specs if spec[:2] not in leaving)
            self._move(member, crowd, kept)

    def leave(self, member: Member) -> None:
        """Remove ``member`` from every subscription. O(held)."""
        crowd = self._crowd_of.get(member)
        if crowd is not None:
            self._move(member, crowd, frozenset())

    def subscriber_count(self, topic: Topic) -> int:
        """Sessions subscribed to ``topic``. O(crowds): for tests and tools."""
        return sum(
            len(crowd.members)
            for specs, crowds in self._crowds.items()
            if any(spec[:2] == topic for spec in specs)
            for crowd in crowds
        )

    def subscriptions(self) -> int:
        """(subscription, session) pairs held now. O(crowds)."""
        return sum(
            len(specs) * len(crowd.members)
            for specs, crowds in self._crowds.items()
            for crowd in crowds
        )

    def crowds(self) -> int:
        """Distinct subscription sets held now: the work of a tick grows with these, not
        with sessions."""
        return len(self._crowds)

    # -- crowds -------------------------------------------------------------------------

    def _move(self, member: Member, crowd: Crowd | None, specs: frozenset[Spec]) -> None:
        """Make ``member`` a member of a crowd of ``specs`` (none when empty)."""
        if crowd is not None and crowd.specs == specs:
            return
        if crowd is not None:
            # Its turn may not have come yet (see the module docstring).
            crowd.hand_over(member)
        crowds = self._crowds
        if crowd is not None and len(crowd.members) == 1 and specs and specs not in crowds:
            # A crowd of one follows its member: re-register only what changed.
            self._detach(crowd)
            for spec in crowd.specs - specs:
                self._remove(crowd, spec)
            for spec in specs - crowd.specs:
                self._add(crowd, spec)
            crowd.specs = specs
            crowds[specs] = [crowd]
            return
        if crowd is not None:
            crowd.members.discard(member)
            del self._crowd_of[member]
            if not crowd.members:
                self._detach(crowd)
                for spec in crowd.specs:
                    self._remove(crowd, spec)
        if specs:
            joined = self._crowd_with_room(specs)
            # What it still holds was offered before ``member`` came (it has had it, or
            # has it queued): written to the members it was for, out of turn, first.
            joined.flush()
            joined.members.add(member)
            self._crowd_of[member] = joined

    def _crowd_with_room(self, specs: frozenset[Spec]) -> Crowd:
        """A crowd of ``specs`` with room for one more member, new if none has. O(crowds
        of ``specs``)."""
        crowds = self._crowds.setdefault(specs, [])
        for crowd in crowds:
            if len(crowd.members) < self._crowd_size:
                return crowd
        crowd = Crowd(specs, self)
        crowds.append(crowd)
        for spec in specs:
            self._add(crowd, spec)
        return crowd

    def _detach(self, crowd: Crowd) -> None:
        """Take ``crowd`` out of the crowds of its specs (its sources still hold it)."""
        crowds = self._crowds[crowd.specs]
        crowds.remove(crowd)
        if not crowds:
            del self._crowds[crowd.specs]

    def _add(self, crowd: Crowd, spec: Spec) -> None:
        channel, key, parameter = spec
        self._sources[channel].add(crowd, key, parameter)

    def _remove(self, crowd: Crowd, spec: Spec) -> None:
        channel, key, parameter = spec
        self._sources[channel].remove(crowd, key, parameter)

    # -- the publish tick ---------------------------------------------------------------

    def request_tick(self) -> None:
        """Have a publish tick run soon (one per loop iteration however many ask). O(1)."""
        if not self._tick_pending:
            self._tick_pending = True
            asyncio.get_running_loop().call_soon(self._tick)

    def flush_soon(self, subscriber: Flushable) -> None:
        """Call ``subscriber.flush()`` in its turn: after everything queued before it, in
        this tick or a later one (see the module docstring). O(1)."""
        self._to_flush.append(subscriber)
        self._queued += 1
        self.request_tick()

    def flush_first(self, subscriber: Flushable) -> None:
        """Call ``subscriber.flush()`` at the start of the next turn, ahead of everything
        ``flush_soon`` queued: for replies (a position's ack), which a round of market
        data writes must not hold back. O(1)."""
        self._replies_first.append(subscriber)
        self.request_tick()

    def flush_replies(self) -> None:
        """Flush every ``flush_first`` now rather than at the start of the next turn: for
        a caller that knows replies were just queued outside a request (the acks of a
        commit; on an edge, a shard's answers), so that they need not wait for a turn of
        socket reads. Ends the round of replies. O(sessions)."""
        self.reply_round += 1
        first = self._replies_first
        while first:
            self._flush_one(first.popleft())

    def _tick(self) -> None:
        more = False
        try:
            more = self._run_tick()
        finally:
            self._tick_pending = False  # a tick that failed must not stop the ones after it
        if more:
            self.request_tick()

    def _run_tick(self) -> bool:
        """Every source publishes what changed, then the flush queue is served for one
        turn; never awaits. True when a source has more to publish or flushes wait."""
        self.counters.ticks += 1
        tick = Tick(self.clock(), measured=self.on_written is not None)
        more = False
        for source in self._sources.values():
            more |= source.publish(tick)
        if tick.delivered:
            self._unwritten.append((self._queued, tick.delivered.values()))
        drained = self._flush_turn(self._turn_size)
        self.framing.end_tick()
        self._report_written()
        return more or not drained

    def flush_now(self) -> None:
        """Flush everything queued, all of it now (including sessions that a crowd's
        flush queues: a member that was behind takes the messages into its own outbox)."""
        self._flush_turn(math.inf)
        self._report_written()

    def _flush_turn(self, size: float) -> bool:
        """Flush every ``flush_first``, then from the front of the queue until it is
        empty (True) or ``size`` subscribers have been written to with some left (False);
        one crowd or session at least. Counted, not timed, so a turn is the same however
        fast the machine or the collector."""
        self.flush_replies()
        queue = self._to_flush
        written = 0
        while queue:
            subscriber = queue.popleft()
            self._flushed += 1
            self._flush_one(subscriber)
            written += len(subscriber.members) if isinstance(subscriber, Crowd) else 1
            if queue and written >= size:
                return False
        return True

    def _flush_one(self, subscriber: Flushable) -> None:
        try:
            subscriber.flush()
        except Exception:  # one client's failure must not stop the others' delivery
            self.write_failed()

    def _report_written(self) -> None:
        """Tell ``on_written`` of the ticks whose every offered crowd has been flushed."""
        unwritten = self._unwritten
        if not unwritten or unwritten[0][0] > self._flushed or self.on_written is None:
            return
        written_ns = self.clock()
        while unwritten and unwritten[0][0] <= self._flushed:
            self.on_written(unwritten.popleft()[1], written_ns)

    def write_failed(self) -> None:
        """Count a write to a subscriber that raised; log the first (call in ``except``)."""
        self.counters.flush_errors += 1
        if self.counters.flush_errors == 1:
            log.exception("writing to a subscriber failed; counting further failures")
