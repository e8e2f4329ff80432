"""The ``bbo`` channel: an instrument's best bid/ask, sent when the top of book changed.

Keyed by instrument. On subscribe: the current BBO if the book is live. Cost: O(1) per
registry snapshot (a dirty mark), one ``encode_bbo`` per changed instrument per tick.
"""

from __future__ import annotations

from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from publish.channels.latest import LatestValueChannel
from publish.channels.source import Engine, Tick
from publish.protocol import Channel, encode_bbo


class BboChannel(LatestValueChannel[BookSnapshot]):
    def __init__(self, registry: BookRegistry, engine: Engine) -> None:
        super().__init__(Channel.BBO, engine, encode=encode_bbo, current=registry.live_snapshot)
        registry.on_snapshot(self._on_snapshot)

    def delivered(self, tick: Tick, value: BookSnapshot) -> None:
        tick.note_delivered(value)

    def _on_snapshot(self, snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        """Mark the instrument when its top changed and someone holds it. O(1)."""
        if self.holds(snapshot.instrument) and not snapshot.same_top(previous):
            self.mark(snapshot.instrument, snapshot)
