"""A channel whose message for a key is the latest value of that key (``bbo``, ``nbbo``).

Listeners call ``mark`` with a key's new value (O(1): kept only when someone holds the
key); the tick encodes each marked key's value once and offers it to the key's crowds.
On subscribe, the key's current value (``current``), unless a mark is pending for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from publish.channels.source import Audience, Engine, Subscriber, Tick, offer_each
from publish.protocol import Channel, SubscriptionRequest

Value = TypeVar("Value")


class LatestValueChannel(Generic[Value]):
    """``encode(value, ts_send)`` makes a key's message; ``current(key)`` is its value
    now (``None``: nothing to send yet)."""

    keyed_messages = True

    def __init__(
        self,
        channel: Channel,
        engine: Engine,
        *,
        encode: Callable[[Value, int], bytes],
        current: Callable[[str], Value | None],
    ) -> None:
        self.channel = channel
        self._engine = engine
        self._encode = encode
        self._current = current
        self._audience = Audience()
        self._dirty: dict[str, Value] = {}

    def granted(self, request: SubscriptionRequest) -> SubscriptionRequest:
        return request

    def add(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._audience.add(key, subscriber)

    def remove(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._audience.remove(key, subscriber)

    def send_current(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        value = self._current(key)
        if value is not None and key not in self._dirty:
            self._engine.counters.messages_encoded += 1
            subscriber.offer((self.channel, key), self._encode(value, self._engine.clock()))

    def publish(self, tick: Tick) -> bool:
        if not self._dirty:
            return False
        dirty, self._dirty = self._dirty, {}
        audience, channel, encode = self._audience, self.channel, self._encode
        counters = self._engine.counters
        for key, value in dirty.items():
            subscribers = audience.of(key)
            if subscribers:
                counters.messages_encoded += 1
                offer_each(subscribers, (channel, key), encode(value, tick.ts_send))
                self.delivered(tick, value)
        return False

    def holds(self, key: str) -> bool:
        """Someone subscribes to ``key``."""
        return key in self._audience

    def mark(self, key: str, value: Value) -> None:
        """``value`` is ``key``'s newest: send it in the next tick. O(1)."""
        self._dirty[key] = value
        self._engine.request_tick()

    def delivered(self, tick: Tick, value: Value) -> None:
        """Called for each value the tick sent (a hook for latency measurement)."""
