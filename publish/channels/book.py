"""The ``book`` channel: an instrument's top N levels per side, sent when those changed.

Keyed by instrument, with a depth N per subscription (default ``DEFAULT_BOOK_DEPTH``, at
most the levels the feeds capture). The subscribers of one instrument at one depth form
a group that remembers the levels it was last sent, so a change below a group's depth
sends it nothing. On subscribe: the current top N if the book is live. Cost per tick:
one ``encode_book`` per changed instrument and distinct depth whose levels moved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from book.registry import BookRegistry
from book.snapshot import BookSnapshot, Level
from publish.channels.source import Engine, Subscriber, Tick, offer_each
from publish.exceptions import RequestError
from publish.protocol import Channel, ErrorCode, SubscriptionRequest, encode_book

DEFAULT_BOOK_DEPTH = 10
"""Levels per side of a ``book`` subscription that names no depth (capped by the server's)."""


@dataclass(slots=True)
class _DepthGroup:
    """The subscribers of one instrument's book at one depth, and the levels last sent to
    them."""

    subscribers: set[Subscriber]
    sent: tuple[tuple[Level, ...], tuple[Level, ...]] | None = None


class BookChannel:
    """``max_depth`` is the deepest book a client may ask for (``[book].capture_depth``)."""

    channel = Channel.BOOK
    keyed_messages = True

    def __init__(self, registry: BookRegistry, engine: Engine, *, max_depth: int) -> None:
        if max_depth < 0:
            raise ValueError("max_depth must be >= 0")
        self.max_depth = max_depth
        self._registry = registry
        self._engine = engine
        self._groups: dict[str, dict[int, _DepthGroup]] = {}
        self._dirty: dict[str, BookSnapshot] = {}
        registry.on_snapshot(self._on_snapshot)

    def depths(self, instrument: str) -> list[int]:
        """The distinct depths subscribed to ``instrument``'s book, ascending."""
        return sorted(self._groups.get(instrument, ()))

    def granted(self, request: SubscriptionRequest) -> SubscriptionRequest:
        most = self.max_depth
        depth = min(DEFAULT_BOOK_DEPTH, most) if request.depth is None else request.depth
        if not 1 <= depth <= most:
            raise RequestError(
                ErrorCode.BAD_REQUEST, f"depth must be between 1 and {most}", request.id
            )
        return replace(request, depth=depth)

    def add(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        groups = self._groups.setdefault(key, {})
        group = groups.get(parameter)
        if group is None:
            group = groups[parameter] = _DepthGroup(set())
        group.subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        groups = self._groups[key]
        group = groups[parameter]
        group.subscribers.discard(subscriber)
        if not group.subscribers:
            del groups[parameter]
            if not groups:
                del self._groups[key]

    def send_current(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        snapshot = self._registry.live_snapshot(key)
        if snapshot is None:
            return
        group = self._groups[key][parameter]
        levels = snapshot.top(parameter)
        if key in self._dirty and levels != group.sent:
            return  # the pending tick sends these levels to the whole group
        group.sent = levels
        self._engine.counters.messages_encoded += 1
        message = encode_book(snapshot, parameter, self._engine.clock())
        subscriber.offer((Channel.BOOK, key), message)

    def publish(self, tick: Tick) -> bool:
        if not self._dirty:
            return False
        dirty, self._dirty = self._dirty, {}
        counters = self._engine.counters
        for instrument, snapshot in dirty.items():
            groups = self._groups.get(instrument)
            if not groups:
                continue
            topic = (Channel.BOOK, instrument)
            for depth, group in groups.items():
                levels = snapshot.top(depth)
                if levels != group.sent:
                    group.sent = levels
                    counters.messages_encoded += 1
                    message = encode_book(snapshot, depth, tick.ts_send)
                    offer_each(group.subscribers, topic, message)
                    tick.note_delivered(snapshot)
        return False

    def _on_snapshot(self, snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        """Mark the instrument dirty whenever it has subscribers at any depth. O(1)."""
        if snapshot.instrument in self._groups:
            self._dirty[snapshot.instrument] = snapshot
            self._engine.request_tick()
