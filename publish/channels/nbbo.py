"""The ``nbbo`` channel: a canonical symbol's consolidated best bid/ask across live venues.

Keyed by symbol (``BTC-USDT``). On subscribe: the current NBBO if there is one. Cost:
O(1) per registry change (a dirty mark), one ``encode_nbbo`` per changed symbol per tick.
"""

from __future__ import annotations

from book.consolidated import ConsolidatedBbo
from book.registry import BookRegistry
from publish.channels.latest import LatestValueChannel
from publish.channels.source import Engine
from publish.protocol import Channel, encode_nbbo


class NbboChannel(LatestValueChannel[ConsolidatedBbo]):
    def __init__(self, registry: BookRegistry, engine: Engine) -> None:
        super().__init__(Channel.NBBO, engine, encode=encode_nbbo, current=registry.nbbo)
        registry.on_nbbo(self._on_nbbo)

    def _on_nbbo(self, nbbo: ConsolidatedBbo) -> None:
        if self.holds(nbbo.symbol):
            self.mark(nbbo.symbol, nbbo)
