"""The ``nbbo`` channel: a canonical symbol's consolidated best bid/ask across live venues.

Keyed by symbol (``BTC-USDT``). On subscribe: the current NBBO if there is one. Cost:
O(1) per registry change (a dirty mark), one ``encode_nbbo`` per changed symbol per tick.
"""

from __future__ import annotations

from book.consolidated import ConsolidatedBbo
from book.registry import BookRegistry
from publish.channels.source import Audience, Engine, Subscriber, Tick, offer_each
from publish.protocol import Channel, SubscriptionRequest, encode_nbbo


class NbboChannel:
    channel = Channel.NBBO
    keyed_messages = True

    def __init__(self, registry: BookRegistry, engine: Engine) -> None:
        self._registry = registry
        self._engine = engine
        self._audience = Audience()
        self._dirty: dict[str, ConsolidatedBbo] = {}
        registry.on_nbbo(self._on_nbbo)

    def granted(self, request: SubscriptionRequest) -> SubscriptionRequest:
        return request

    def add(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._audience.add(key, subscriber)

    def remove(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._audience.remove(key, subscriber)

    def send_current(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        nbbo = self._registry.nbbo(key)
        if nbbo is not None and key not in self._dirty:
            self._engine.counters.messages_encoded += 1
            subscriber.offer((Channel.NBBO, key), encode_nbbo(nbbo, self._engine.clock()))

    def publish(self, tick: Tick) -> bool:
        if not self._dirty:
            return False
        dirty, self._dirty = self._dirty, {}
        audience = self._audience
        for symbol, nbbo in dirty.items():
            subscribers = audience.of(symbol)
            if subscribers:
                self._engine.counters.messages_encoded += 1
                offer_each(subscribers, (Channel.NBBO, symbol), encode_nbbo(nbbo, tick.ts_send))
        return False

    def _on_nbbo(self, nbbo: ConsolidatedBbo) -> None:
        if nbbo.symbol in self._audience:
            self._dirty[nbbo.symbol] = nbbo
            self._engine.request_tick()
