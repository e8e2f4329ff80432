"""The fan-out engine: channel sources -> one encoded message per change -> every subscriber.

Every channel is a ``publish.channels.ChannelSource``: it watches its values (registry
listeners only mark a key dirty, O(1), nothing is encoded there) and asks for a tick.
The first request of an event-loop iteration schedules one publish tick with
``loop.call_soon``, so everything the feeds applied in that iteration goes out together
in the next one: the lowest latency the loop allows, and natural batching. In the tick
every source encodes each dirty key's latest value ONCE and offers the same bytes to
every subscriber; nothing in a tick awaits, so a slow client can never delay the others.

Sessions subscribed to exactly the same subscriptions (channel, key and parameter, such
as a book's depth) form a ``Crowd``, and sources see crowds, never sessions: the tick
offers each message to a crowd once, frames the crowd's messages once when the tick
ends, and writes those same bytes to every member whose socket takes them (one write
per member). A member that is behind, or has replies or state of its own queued, takes
the messages into its own conflating outbox instead (``publish.outbox.Outbox``). A
session with subscriptions nobody else has is a crowd of one. Which crowd a session is
in is its subscription state: the one place it is kept.

Cost per tick: O(dirty keys) encodes (book: per distinct subscribed depth) + O(sum of
their crowds) offers + one framing per crowd + one write per member touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
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
"""Told at the end of a tick: the snapshots whose bbo/book messages it delivered, and the
time (ns, ``Fanout.clock``) by which their frames were written to every subscriber whose
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
    """The members subscribed to exactly ``specs``: one outbox per tick for all of them.

    ``offer`` is one dict store; ``flush`` (at the end of the tick) hands the same
    ``TickMessages`` to every member.
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
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.book_depth = book_depth
        self.counters = Counters()
        self.framing = Framing()
        """Frames messages in each connection's wire format, memoized per tick."""
        self.on_written = on_written
        self._crowds: dict[frozenset[Spec], Crowd] = {}
        self._crowd_of: dict[Member, Crowd] = {}
        self._to_flush: list[Flushable] = []
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
            for crowd in self._crowds.values()
            if any(spec[:2] == topic for spec in crowd.specs)
        )

    def subscriptions(self) -> int:
        """(subscription, session) pairs held now. O(crowds)."""
        return sum(len(crowd.specs) * len(crowd.members) for crowd in self._crowds.values())

    def crowds(self) -> int:
        """Distinct subscription sets held now: the work of a tick grows with these, not
        with sessions."""
        return len(self._crowds)

    # -- crowds -------------------------------------------------------------------------

    def _move(self, member: Member, crowd: Crowd | None, specs: frozenset[Spec]) -> None:
        """Make ``member`` a member of the crowd of ``specs`` (none when empty)."""
        if crowd is not None and crowd.specs == specs:
            return
        crowds = self._crowds
        if crowd is not None and len(crowd.members) == 1 and specs and specs not in crowds:
            # A crowd of one follows its member: re-register only what changed.
            del crowds[crowd.specs]
            for spec in crowd.specs - specs:
                self._remove(crowd, spec)
            for spec in specs - crowd.specs:
                self._add(crowd, spec)
            crowd.specs = specs
            crowds[specs] = crowd
            return
        if crowd is not None:
            crowd.members.discard(member)
            del self._crowd_of[member]
            if not crowd.members:
                del crowds[crowd.specs]
                for spec in crowd.specs:
                    self._remove(crowd, spec)
        if specs:
            joined = crowds.get(specs)
            if joined is None:
                joined = crowds[specs] = Crowd(specs, self)
                for spec in specs:
                    self._add(joined, spec)
            joined.members.add(member)
            self._crowd_of[member] = joined

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
        """Call ``subscriber.flush()`` at the end of this (or the next) tick. O(1)."""
        self._to_flush.append(subscriber)
        self.request_tick()

    def _tick(self) -> None:
        more = False
        try:
            more = self._run_tick()
        finally:
            self._tick_pending = False  # a tick that failed must not stop the ones after it
        if more:
            self.request_tick()

    def _run_tick(self) -> bool:
        """Every source publishes what changed, then everything offered is flushed; never
        awaits. True when a source has more to publish."""
        self.counters.ticks += 1
        tick = Tick(self.clock(), measured=self.on_written is not None)
        more = False
        for source in self._sources.values():
            more |= source.publish(tick)
        self.flush_now()
        self.framing.end_tick()
        if tick.delivered and self.on_written is not None:
            self.on_written(tick.delivered.values(), self.clock())
        return more

    def flush_now(self) -> None:
        """Flush everything that asked, including sessions that a crowd's flush queued
        (a member that was behind takes the tick into its own outbox)."""
        while self._to_flush:
            to_flush, self._to_flush = self._to_flush, []
            for subscriber in to_flush:
                try:
                    subscriber.flush()
                except Exception:  # one client's failure must not stop the others' delivery
                    self.write_failed()

    def write_failed(self) -> None:
        """Count a write to a subscriber that raised; log the first (call in ``except``)."""
        self.counters.flush_errors += 1
        if self.counters.flush_errors == 1:
            log.exception("writing to a subscriber failed; counting further failures")
