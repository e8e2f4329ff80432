"""The ``bbo`` channel: an instrument's best bid/ask, sent when the top of book changed.

Keyed by instrument. On subscribe: the current BBO if the book is live. Cost: O(1) per
registry snapshot (a dirty mark), one ``encode_bbo`` per changed instrument per tick.
"""

from __future__ import annotations

from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from publish.channels.source import Audience, Engine, Subscriber, Tick, offer_each
from publish.protocol import Channel, SubscriptionRequest, encode_bbo


class BboChannel:
    channel = Channel.BBO
    keyed_messages = True

    def __init__(self, registry: BookRegistry, engine: Engine) -> None:
        self._registry = registry
        self._engine = engine
        self._audience = Audience()
        self._dirty: dict[str, BookSnapshot] = {}
        registry.on_snapshot(self._on_snapshot)

    def granted(self, request: SubscriptionRequest) -> SubscriptionRequest:
        return request

    def add(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._audience.add(key, subscriber)

    def remove(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._audience.remove(key, subscriber)

    def send_current(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        snapshot = self._registry.live_snapshot(key)
        if snapshot is not None and key not in self._dirty:
            self._engine.counters.messages_encoded += 1
            subscriber.offer((Channel.BBO, key), encode_bbo(snapshot, self._engine.clock()))

    def publish(self, tick: Tick) -> bool:
        if not self._dirty:
            return False
        dirty, self._dirty = self._dirty, {}
        audience = self._audience
        ts_send = tick.ts_send
        for instrument, snapshot in dirty.items():
            subscribers = audience.of(instrument)
            if subscribers:
                self._engine.counters.messages_encoded += 1
                offer_each(subscribers, (Channel.BBO, instrument), encode_bbo(snapshot, ts_send))
                tick.note_delivered(snapshot)
        return False

    def _on_snapshot(self, snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        """Mark the instrument dirty when its top changed and someone holds it. O(1)."""
        if snapshot.instrument in self._audience and not snapshot.same_top(previous):
            self._dirty[snapshot.instrument] = snapshot
            self._engine.request_tick()
