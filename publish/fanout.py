"""The fan-out engine: registry changes -> one encoded message per change -> every subscriber.

Listeners on the ``BookRegistry`` only mark a topic dirty (O(1), nothing is encoded
there). The first mark of an event-loop iteration schedules one publish tick with
``loop.call_soon``, so everything the feeds applied in that iteration goes out together
in the next one: the lowest latency the loop allows, and natural batching. The tick
encodes each dirty topic's latest value ONCE and hands the same bytes to every
subscriber; nothing in a tick awaits, so a slow client can never delay the others.

Sessions subscribed to exactly the same market-data topics (at the same book depths)
form a ``Crowd``: the tick offers each message to the crowd once, frames the crowd's
messages once when the tick ends, and writes those same bytes to every member whose
socket takes them (one write per member). A member that is behind, or has replies or
state of its own queued, takes the messages into its own conflating outbox instead
(``publish.client.ClientSession.take_tick``). A session with subscriptions nobody else
has is a crowd of one.

Channels: ``bbo`` (top of book changed), ``book`` (the top N levels changed, per
subscribed depth N), ``nbbo`` (the consolidated quote changed), ``status`` (an
instrument's state changed) and ``metrics`` (a timer, every ``metrics_interval`` s
while anyone subscribes, or ``publish_metrics()`` calls when the interval is ``None``;
the content comes from the ``metrics`` provider). Channels produced elsewhere plug in
as a ``ChannelSource`` (``profit``: ``publish.profit``) and publish in the same tick.

Cost per tick: O(dirty topics) encodes (book: per distinct subscribed depth) + O(sum of
their crowds) offers + one framing per crowd + one write per member touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from book.consolidated import ConsolidatedBbo
from book.registry import BookRegistry
from book.snapshot import BookSnapshot, Level
from book.status import InstrumentStatus
from publish.protocol import (
    Channel,
    encode_batch,
    encode_bbo,
    encode_book,
    encode_metrics,
    encode_nbbo,
    encode_status,
    text_frames,
)

log = logging.getLogger(__name__)

Topic = tuple[Channel, str]
"""``(channel, key)``: what a client subscribes to and what an outbox entry is keyed by.

The key is an instrument (``bbo``, ``book``) or canonical symbol (``nbbo``) for keyed
channels and ``CHANNEL_WIDE`` for a subscription to a whole channel (``status``,
``metrics``); ``status`` messages are keyed per instrument in outboxes.
"""

CHANNEL_WIDE = ""
STATUS_TOPIC: Topic = (Channel.STATUS, CHANNEL_WIDE)
METRICS_TOPIC: Topic = (Channel.METRICS, CHANNEL_WIDE)

MetricsProvider = Callable[[], Mapping[str, object]]
"""Returns the content of one ``metrics`` message (JSON-able values)."""

WrittenHook = Callable[[Iterable[BookSnapshot], int], None]
"""Told at the end of a tick: the snapshots whose bbo/book messages it delivered, and the
time (ns, ``Fanout.clock``) by which their frames were written to every subscriber whose
socket took them (publish and end-to-end latency; conflated ones are written later)."""


class Subscriber(Protocol):
    """What the engine needs from a client: a non-blocking, latest-wins offer, and a
    flush when the tick that offered ends (for clients that asked for ``flush_soon``)."""

    def offer(self, key: Topic, message: bytes) -> None: ...

    def flush(self) -> None: ...


Spec = tuple[Channel, str, int]
"""A market-data subscription: channel, key and book depth (0 for other channels)."""


class TickMessages:
    """One crowd's messages of one tick, framed once for all its members, lazily: only
    the forms some member writes (one frame per message, or one batch frame)."""

    __slots__ = ("_batch_frame", "_frames", "messages")

    def __init__(self, messages: dict[Topic, bytes]) -> None:
        self.messages = messages
        self._frames: bytes | None = None
        self._batch_frame: bytes | None = None

    @property
    def frames(self) -> bytes:
        if self._frames is None:
            self._frames = text_frames(self.messages.values())
        return self._frames

    @property
    def batch_frame(self) -> bytes:
        if self._batch_frame is None:
            self._batch_frame = text_frames((encode_batch(self.messages.values()),))
        return self._batch_frame


class SourceSubscriber(Subscriber, Protocol):
    """What a ``ChannelSource`` is given: a session, which also takes many messages in
    one call."""

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        """``offer`` each message in order (one call for many: the profit engine's)."""
        ...


class Member(SourceSubscriber, Protocol):
    """A session as the engine sees it: a subscriber that can also take a crowd's tick."""

    def take_tick(self, tick: TickMessages) -> None: ...


class Crowd:
    """The members subscribed to exactly ``specs``: one outbox per tick for all of them.

    ``offer`` is one dict store; ``flush`` (at the end of the tick) hands the same
    ``TickMessages`` to every member. The engine registers crowds, never sessions, for
    market-data topics.
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

    def flush(self) -> None:
        if not self._outbox:
            return
        tick = TickMessages(self._outbox)
        self._outbox = {}
        for member in self.members:
            try:
                member.take_tick(tick)
            except Exception:  # one client's failure must not stop the others' delivery
                self._fanout.write_failed()


class ChannelSource(Protocol):
    """A channel whose messages another engine produces (``profit``: the profit engine).

    The fan-out routes the channel's (un)subscriptions to it, keyed as requested, and
    calls ``publish`` in every tick, before batched clients are flushed; the source asks
    for a tick with ``Fanout.request_tick`` when it has something to send, and returns
    True from ``publish`` when it has more than one tick's work (another tick then runs
    in the next loop iteration, after the loop has served its I/O).
    """

    def subscribe(self, subscriber: SourceSubscriber, key: str) -> None: ...

    def unsubscribe(self, subscriber: SourceSubscriber, key: str) -> None: ...

    def publish(self, ts_send: int) -> bool: ...


@dataclass(slots=True)
class Counters:
    """Running totals of the engine and its sessions, read by metrics (mutable, not locked:
    everything runs on one event loop)."""

    clients: int = 0
    """Sessions open now (a gauge)."""
    connections_total: int = 0
    ticks: int = 0
    messages_encoded: int = 0
    """Messages encoded by ticks: one per dirty topic with subscribers, however many."""
    messages_sent: int = 0
    frames_sent: int = 0
    conflated: int = 0
    """Queued messages replaced by a newer one of the same key before being written."""
    slow_closes: int = 0
    errors_sent: int = 0
    rate_limited: int = 0
    """Requests refused because the connection was over its ops-per-second budget."""
    error_closes: int = 0
    """Connections closed for using up their error budget (4029)."""
    auth_failures: int = 0
    flush_errors: int = 0
    """Writes to a subscriber that raised (a bug or a dead transport; logged once)."""


@dataclass(slots=True)
class _BookGroup:
    """The subscribers of one instrument's book at one depth, and the levels last sent to
    them (so a change below their depth sends nothing)."""

    subscribers: set[Crowd]
    sent: tuple[tuple[Level, ...], tuple[Level, ...]] | None = None


class Fanout:
    """Routes registry changes to subscribers. One per server; lives on the event loop.

    ``clock`` (ns since the epoch) stamps ``ts_send``: the time of the tick that encoded a
    message (or of the subscribe that sent the current state), once for all its copies.
    ``book_depth`` is the deepest ``book`` a client may ask for: the levels per side the
    feeds capture into snapshots (``[book].capture_depth``). ``metrics`` provides the
    ``metrics`` channel's content (default: ``stats()``).
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
        if book_depth < 0 or (metrics_interval is not None and metrics_interval <= 0):
            raise ValueError("book_depth must be >= 0 and metrics_interval positive")
        self.registry = registry
        self.clock = clock
        self.book_depth = book_depth
        self.counters = Counters()
        self._metrics = metrics or self.stats
        self._metrics_interval = metrics_interval
        self._metrics_timer: asyncio.TimerHandle | None = None
        self.on_written = on_written
        self._subscribers: dict[Topic, set[Crowd]] = {}
        self._crowds: dict[frozenset[Spec], Crowd] = {}
        self._crowd_of: dict[Member, Crowd] = {}
        self._book_groups: dict[str, dict[int, _BookGroup]] = {}
        self._dirty_bbo: dict[str, BookSnapshot] = {}
        self._dirty_book: dict[str, BookSnapshot] = {}
        self._dirty_nbbo: dict[str, ConsolidatedBbo] = {}
        self._dirty_status: dict[str, InstrumentStatus] = {}
        self._to_flush: list[Subscriber] = []
        self._sources: dict[Channel, ChannelSource] = {}
        self._tick_pending = False
        registry.on_snapshot(self._on_snapshot)
        registry.on_status(self._on_status)
        registry.on_nbbo(self._on_nbbo)

    def stats(self) -> dict[str, object]:
        """The counters and subscription gauges as a dict (the default ``metrics``
        content). O(fields + crowds)."""
        return {
            **dataclasses.asdict(self.counters),
            "subscriptions": self.subscriptions(),
            "crowds": self.crowds(),
        }

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, member: Member, topics: Iterable[Topic], *, depth: int = 0) -> None:
        """Add ``member`` to ``topics`` (validated, not yet subscribed) and offer it the
        current state: a live book's bbo or top ``depth`` levels (``book`` topics), the
        symbol's nbbo, every instrument's status, the metrics. O(topics held) to move
        the member to its new crowd; status O(instruments)."""
        specs = []
        for channel, key in topics:
            source = self._sources.get(channel)
            if source is not None:
                source.subscribe(member, key)
            else:
                specs.append((channel, key, depth if channel is Channel.BOOK else 0))
        if not specs:
            return
        crowd = self._crowd_of.get(member)
        held = crowd.specs if crowd is not None else frozenset()
        self._move(member, crowd, held | frozenset(specs))
        for spec in specs:
            self._send_current(member, spec)

    def unsubscribe(self, member: Member, topics: Iterable[Topic]) -> None:
        """Remove ``member`` from ``topics`` (missing ones are ignored). O(topics held)."""
        leaving = set()
        for topic in topics:
            source = self._sources.get(topic[0])
            if source is not None:
                source.unsubscribe(member, topic[1])
            else:
                leaving.add(topic)
        crowd = self._crowd_of.get(member)
        if crowd is not None and leaving:
            kept = frozenset(spec for spec in crowd.specs if spec[:2] not in leaving)
            self._move(member, crowd, kept)

    def add_source(self, channel: Channel, source: ChannelSource) -> None:
        """Let ``source`` serve ``channel`` (see ``ChannelSource``)."""
        if channel in self._sources:
            raise ValueError(f"channel {channel.value} already has a source")
        self._sources[channel] = source

    def has_source(self, channel: Channel) -> bool:
        return channel in self._sources

    def request_tick(self) -> None:
        """Have a publish tick run soon (one per loop iteration however many ask). O(1)."""
        self._schedule_tick()

    def subscriber_count(self, topic: Topic) -> int:
        """Sessions subscribed to ``topic`` (a market-data topic). O(its crowds)."""
        return sum(len(crowd.members) for crowd in self._subscribers.get(topic, ()))

    def subscriptions(self) -> int:
        """(market-data topic, session) pairs held now. O(crowds)."""
        return sum(len(crowd.specs) * len(crowd.members) for crowd in self._crowds.values())

    def crowds(self) -> int:
        """Distinct subscription sets held now: the work of a tick grows with these, not
        with sessions."""
        return len(self._crowds)

    def book_depths(self, instrument: str) -> list[int]:
        """The distinct depths subscribed to ``instrument``'s book, ascending."""
        return sorted(self._book_groups.get(instrument, ()))

    def flush_soon(self, subscriber: Subscriber) -> None:
        """Call ``subscriber.flush()`` at the end of this (or the next) tick. O(1)."""
        self._to_flush.append(subscriber)
        self._schedule_tick()

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
                self._unregister(crowd, spec)
            for spec in specs - crowd.specs:
                self._register(crowd, spec)
            crowd.specs = specs
            crowds[specs] = crowd
            return
        if crowd is not None:
            crowd.members.discard(member)
            del self._crowd_of[member]
            if not crowd.members:
                del crowds[crowd.specs]
                for spec in crowd.specs:
                    self._unregister(crowd, spec)
        if specs:
            joined = crowds.get(specs)
            if joined is None:
                joined = crowds[specs] = Crowd(specs, self)
                for spec in specs:
                    self._register(joined, spec)
            joined.members.add(member)
            self._crowd_of[member] = joined

    def _register(self, crowd: Crowd, spec: Spec) -> None:
        channel, key, depth = spec
        self._subscribers.setdefault((channel, key), set()).add(crowd)
        if channel is Channel.BOOK:
            groups = self._book_groups.setdefault(key, {})
            group = groups.get(depth)
            if group is None:
                group = groups[depth] = _BookGroup(set())
            group.subscribers.add(crowd)
        elif channel is Channel.METRICS:
            self._start_metrics()

    def _unregister(self, crowd: Crowd, spec: Spec) -> None:
        channel, key, depth = spec
        topic = (channel, key)
        targets = self._subscribers[topic]
        targets.discard(crowd)
        if not targets:
            del self._subscribers[topic]
            if channel is Channel.METRICS:
                self._stop_metrics()
        if channel is Channel.BOOK:
            groups = self._book_groups[key]
            group = groups[depth]
            group.subscribers.discard(crowd)
            if not group.subscribers:
                del groups[depth]
                if not groups:
                    del self._book_groups[key]

    def _send_current(self, member: Member, spec: Spec) -> None:
        """Offer ``member`` the current state of ``spec``, unless a pending tick is about
        to deliver it to its crowd anyway (a message is never sent twice)."""
        channel, key, depth = spec
        registry = self.registry
        if channel is Channel.BBO:
            snapshot = registry.live_snapshot(key)
            if snapshot is not None and key not in self._dirty_bbo:
                self._offer_new(member, (channel, key), encode_bbo(snapshot, self.clock()))
        elif channel is Channel.BOOK:
            snapshot = registry.live_snapshot(key)
            if snapshot is None:
                return
            group = self._book_groups[key][depth]
            levels = snapshot.top(depth)
            if key in self._dirty_book and levels != group.sent:
                return  # the pending tick sends these levels to the whole group
            group.sent = levels
            self._offer_new(member, (channel, key), encode_book(snapshot, depth, self.clock()))
        elif channel is Channel.NBBO:
            nbbo = registry.nbbo(key)
            if nbbo is not None and key not in self._dirty_nbbo:
                self._offer_new(member, (channel, key), encode_nbbo(nbbo, self.clock()))
        elif channel is Channel.STATUS:
            for status in registry.statuses():
                if status.instrument not in self._dirty_status:
                    key = status.instrument
                    self._offer_new(member, (channel, key), encode_status(status))
        elif channel is Channel.METRICS:
            self._offer_new(member, (channel, key), self._encode_metrics())

    def _offer_new(self, member: Member, key: Topic, message: bytes) -> None:
        self.counters.messages_encoded += 1
        member.offer(key, message)

    # -- registry listeners (called synchronously by the feeds' publishes) -------------

    def _on_snapshot(self, snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        """Mark bbo dirty when the top changed and book whenever it has subscribers. O(1)."""
        instrument = snapshot.instrument
        subscribers = self._subscribers
        if (Channel.BBO, instrument) in subscribers and not snapshot.same_top(previous):
            self._dirty_bbo[instrument] = snapshot
            self._schedule_tick()
        if instrument in self._book_groups:
            self._dirty_book[instrument] = snapshot
            self._schedule_tick()

    def _on_nbbo(self, nbbo: ConsolidatedBbo) -> None:
        if (Channel.NBBO, nbbo.symbol) in self._subscribers:
            self._dirty_nbbo[nbbo.symbol] = nbbo
            self._schedule_tick()

    def _on_status(self, status: InstrumentStatus) -> None:
        if STATUS_TOPIC in self._subscribers:
            self._dirty_status[status.instrument] = status
            self._schedule_tick()

    def _schedule_tick(self) -> None:
        if not self._tick_pending:
            self._tick_pending = True
            asyncio.get_running_loop().call_soon(self._tick)

    # -- the publish tick ---------------------------------------------------------------

    def _tick(self) -> None:
        more = False
        try:
            more = self._run_tick()
        finally:
            self._tick_pending = False  # a tick that failed must not stop the ones after it
        if more:
            self._schedule_tick()

    def _run_tick(self) -> bool:
        """Encode every dirty topic once, offer it to its subscribers, flush the batched
        ones; never awaits. True when a channel source has more to publish."""
        self.counters.ticks += 1
        subscribers = self._subscribers
        if self._dirty_status:
            dirty_status, self._dirty_status = self._dirty_status, {}
            targets = subscribers.get(STATUS_TOPIC)
            if targets:
                for instrument, status in dirty_status.items():
                    self._deliver(targets, (Channel.STATUS, instrument), encode_status(status))
        ts_send = self.clock()
        # Only kept for the on_written hook: one dict store per delivered instrument.
        delivered: dict[str, BookSnapshot] | None = None if self.on_written is None else {}
        if self._dirty_bbo:
            dirty_bbo, self._dirty_bbo = self._dirty_bbo, {}
            for instrument, snapshot in dirty_bbo.items():
                topic = (Channel.BBO, instrument)
                targets = subscribers.get(topic)
                if targets:
                    self._deliver(targets, topic, encode_bbo(snapshot, ts_send))
                    if delivered is not None:
                        delivered[instrument] = snapshot
        if self._dirty_book:
            dirty_book, self._dirty_book = self._dirty_book, {}
            for instrument, snapshot in dirty_book.items():
                if self._tick_book(instrument, snapshot, ts_send) and delivered is not None:
                    delivered[instrument] = snapshot
        if self._dirty_nbbo:
            dirty_nbbo, self._dirty_nbbo = self._dirty_nbbo, {}
            for symbol, nbbo in dirty_nbbo.items():
                topic = (Channel.NBBO, symbol)
                targets = subscribers.get(topic)
                if targets:
                    self._deliver(targets, topic, encode_nbbo(nbbo, ts_send))
        more = False
        for source in self._sources.values():
            more |= source.publish(ts_send)
        self._flush()
        if delivered and self.on_written is not None:
            self.on_written(delivered.values(), self.clock())
        return more

    def _tick_book(self, instrument: str, snapshot: BookSnapshot, ts_send: int) -> bool:
        """Deliver the levels each depth group has not seen; True if any group got some."""
        groups = self._book_groups.get(instrument)
        if not groups:
            return False
        topic = (Channel.BOOK, instrument)
        sent = False
        for depth, group in groups.items():
            levels = snapshot.top(depth)
            if levels != group.sent:
                group.sent = levels
                self._deliver(group.subscribers, topic, encode_book(snapshot, depth, ts_send))
                sent = True
        return sent

    def _deliver(self, targets: set[Crowd], key: Topic, message: bytes) -> None:
        self.counters.messages_encoded += 1
        for crowd in targets:
            crowd.offer(key, message)

    def _flush(self) -> None:
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

    # -- the metrics timer ---------------------------------------------------------------

    def _encode_metrics(self) -> bytes:
        return encode_metrics(self._metrics(), self.clock())

    def publish_metrics(self) -> None:
        """Send the metrics to the channel's subscribers now. With ``metrics_interval=None``
        there is no timer and the provider's owner calls this on its own clock
        (``publish.metrics.Metrics`` once per report). O(subscribers)."""
        targets = self._subscribers.get(METRICS_TOPIC)
        if not targets:
            return
        self._deliver(targets, METRICS_TOPIC, self._encode_metrics())
        self._flush()  # written now: each report is sent, even several in one iteration

    def _start_metrics(self) -> None:
        if self._metrics_timer is None and self._metrics_interval is not None:
            loop = asyncio.get_running_loop()
            self._metrics_timer = loop.call_later(self._metrics_interval, self._publish_metrics)

    def _stop_metrics(self) -> None:
        if self._metrics_timer is not None:
            self._metrics_timer.cancel()
            self._metrics_timer = None

    def _publish_metrics(self) -> None:
        self._metrics_timer = None
        if METRICS_TOPIC in self._subscribers:
            self.publish_metrics()
            self._start_metrics()
