"""The fan-out engine: registry changes -> one encoded message per change -> every subscriber.

Listeners on the ``BookRegistry`` only mark a topic dirty (O(1), nothing is encoded
there). The first mark of an event-loop iteration schedules one publish tick with
``loop.call_soon``, so everything the feeds applied in that iteration goes out together
in the next one: the lowest latency the loop allows, and natural batching. The tick
encodes each dirty topic's latest value ONCE and offers the same bytes to every
subscriber; an offer is a dict store on the subscriber's outbox (see
``publish.client.ClientSession.offer``), so the tick never waits for any socket and a
slow client can never delay the others.

Cost per tick: O(dirty topics) encodes + O(sum of their subscribers) offers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentStatus
from publish.protocol import Channel, encode_bbo, encode_status

Topic = tuple[Channel, str]
"""``(channel, key)``: what a client subscribes to and what an outbox entry is keyed by.

The key is an instrument for keyed channels (``bbo``) and ``CHANNEL_WIDE`` for a
subscription to a whole channel (``status``), whose messages are keyed per instrument.
"""

CHANNEL_WIDE = ""
STATUS_TOPIC: Topic = (Channel.STATUS, CHANNEL_WIDE)


class Subscriber(Protocol):
    """What the engine needs from a client: a non-blocking, latest-wins offer."""

    def offer(self, key: Topic, message: bytes) -> None: ...


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


class Fanout:
    """Routes registry changes to subscribers. One per server; lives on the event loop.

    ``clock`` (ns since the epoch) stamps ``ts_send``: the time of the tick that encoded a
    message (or of the subscribe that sent the current state), once for all its copies.
    """

    def __init__(self, registry: BookRegistry, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.registry = registry
        self.clock = clock
        self.counters = Counters()
        self._subscribers: dict[Topic, set[Subscriber]] = {}
        self._dirty_bbo: dict[str, BookSnapshot] = {}
        self._dirty_status: dict[str, InstrumentStatus] = {}
        self._tick_pending = False
        registry.on_snapshot(self._on_snapshot)
        registry.on_status(self._on_status)

    def subscribe(self, subscriber: Subscriber, topics: Iterable[Topic]) -> None:
        """Add ``subscriber`` to ``topics`` (validated, not yet subscribed) and offer it the
        current state: a live book's bbo, every instrument's status. O(topics), status
        O(instruments)."""
        registry = self.registry
        for topic in topics:
            self._subscribers.setdefault(topic, set()).add(subscriber)
            channel, instrument = topic
            if channel is Channel.BBO:
                # A dirty topic is about to be delivered to every subscriber, this one too.
                if instrument in self._dirty_bbo:
                    continue
                snapshot = registry.live_snapshot(instrument)
                if snapshot is not None:
                    self.counters.messages_encoded += 1
                    subscriber.offer(topic, encode_bbo(snapshot, self.clock()))
            elif channel is Channel.STATUS:
                for status in registry.statuses():
                    if status.instrument not in self._dirty_status:
                        self.counters.messages_encoded += 1
                        subscriber.offer((Channel.STATUS, status.instrument), encode_status(status))

    def unsubscribe(self, subscriber: Subscriber, topics: Iterable[Topic]) -> None:
        """Remove ``subscriber`` from ``topics`` (missing ones are ignored). O(topics)."""
        subscribers = self._subscribers
        for topic in topics:
            targets = subscribers.get(topic)
            if targets is not None:
                targets.discard(subscriber)
                if not targets:
                    del subscribers[topic]

    def subscriber_count(self, topic: Topic) -> int:
        return len(self._subscribers.get(topic, ()))

    # -- registry listeners (called synchronously by the feeds' publishes) -------------

    def _on_snapshot(self, snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        """Mark the bbo dirty when the top changed and someone listens. O(1)."""
        instrument = snapshot.instrument
        if snapshot.same_top(previous) or (Channel.BBO, instrument) not in self._subscribers:
            return
        self._dirty_bbo[instrument] = snapshot
        self._schedule_tick()

    def _on_status(self, status: InstrumentStatus) -> None:
        if STATUS_TOPIC not in self._subscribers:
            return
        self._dirty_status[status.instrument] = status
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        if not self._tick_pending:
            self._tick_pending = True
            asyncio.get_running_loop().call_soon(self._tick)

    # -- the publish tick ---------------------------------------------------------------

    def _tick(self) -> None:
        """Encode every dirty topic once and offer it to its subscribers; never awaits."""
        self._tick_pending = False
        self.counters.ticks += 1
        subscribers = self._subscribers
        if self._dirty_status:
            dirty_status, self._dirty_status = self._dirty_status, {}
            targets = subscribers.get(STATUS_TOPIC)
            if targets:
                for instrument, status in dirty_status.items():
                    self._deliver(targets, (Channel.STATUS, instrument), encode_status(status))
        if self._dirty_bbo:
            dirty_bbo, self._dirty_bbo = self._dirty_bbo, {}
            ts_send = self.clock()
            for instrument, snapshot in dirty_bbo.items():
                topic = (Channel.BBO, instrument)
                targets = subscribers.get(topic)
                if targets:
                    self._deliver(targets, topic, encode_bbo(snapshot, ts_send))

    def _deliver(self, targets: set[Subscriber], key: Topic, message: bytes) -> None:
        self.counters.messages_encoded += 1
        for subscriber in targets:
            subscriber.offer(key, message)
