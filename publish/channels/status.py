"""The ``status`` channel: every instrument's state (``syncing``/``live``/``stale``).

Channel-wide (one subscription covers every instrument); messages are keyed per
instrument. On subscribe: every instrument's current state. Cost: O(1) per state change
(a dirty mark), one ``encode_status`` per changed instrument per tick.
"""

from __future__ import annotations

from book.registry import BookRegistry
from book.status import InstrumentStatus
from publish.channels.source import Engine, Subscriber, Tick, offer_each
from publish.protocol import Channel, SubscriptionRequest, encode_status


class StatusChannel:
    channel = Channel.STATUS
    keyed_messages = False

    def __init__(self, registry: BookRegistry, engine: Engine) -> None:
        self._registry = registry
        self._engine = engine
        self._subscribers: set[Subscriber] = set()
        self._dirty: dict[str, InstrumentStatus] = {}
        registry.on_status(self._on_status)

    def granted(self, request: SubscriptionRequest) -> SubscriptionRequest:
        return request

    def add(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._subscribers.discard(subscriber)

    def send_current(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        """Every instrument's state, except those a pending tick is about to send. O(n)."""
        counters = self._engine.counters
        for status in self._registry.statuses():
            if status.instrument not in self._dirty:
                counters.messages_encoded += 1
                subscriber.offer((Channel.STATUS, status.instrument), encode_status(status))

    def publish(self, tick: Tick) -> bool:
        if not self._dirty:
            return False
        dirty, self._dirty = self._dirty, {}
        subscribers = self._subscribers
        if subscribers:
            for instrument, status in dirty.items():
                self._engine.counters.messages_encoded += 1
                offer_each(subscribers, (Channel.STATUS, instrument), encode_status(status))
        return False

    def _on_status(self, status: InstrumentStatus) -> None:
        if self._subscribers:
            self._dirty[status.instrument] = status
            self._engine.request_tick()
