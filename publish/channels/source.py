"""What a channel is to the fan-out: a ``ChannelSource``, and the types it deals in.

A channel source owns everything particular to its channel: which values it watches
(registry listeners, another engine's events), which subscribers hold which keys, what
is dirty, how a message is encoded, and what a new subscriber is sent first. The
fan-out only moves subscribers between crowds (``publish.fanout.Crowd``: sessions with
the very same subscriptions), tells each source which crowds hold which of its keys,
and runs the publish tick, in which every source publishes what changed.

Sources deliver to crowds only inside a tick (``publish``), so a crowd's messages are
framed once when the crowd is flushed, for all its members; what one new subscriber is
sent first goes to that subscriber alone (``send_current``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from book.snapshot import BookSnapshot
from publish.counters import Counters
from publish.protocol import Channel, SubscriptionRequest

Topic = tuple[Channel, str]
"""``(channel, key)``: what a client subscribes to and what an outbox entry is keyed by.

The key is an instrument (``bbo``, ``book``), a canonical symbol (``nbbo``) or an
account (``profit``) for keyed channels and ``CHANNEL_WIDE`` for a subscription to a
whole channel (``status``, ``metrics``). Messages of channels whose messages are not
keyed by subscription (``status`` per instrument, ``profit`` per position) use their
own second element.
"""

CHANNEL_WIDE = ""

Spec = tuple[Channel, str, int]
"""A subscription: channel, key and the channel's parameter (``book``: the depth; 0 for
channels without one)."""


class Subscriber(Protocol):
    """Where a source puts messages: a crowd (in a tick) or one session (its current
    state). Non-blocking and latest-wins: a message replaces an unsent one of its key."""

    def offer(self, key: Topic, message: bytes) -> None: ...

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        """``offer`` each message in order (one call for many)."""
        ...


class Tick:
    """One publish tick as sources see it: the time that stamps its messages (``ts_send``,
    once for every copy) and, when the fan-out measures latency, the snapshots whose
    messages it delivered."""

    __slots__ = ("delivered", "ts_send")

    def __init__(self, ts_send: int, *, measured: bool) -> None:
        self.ts_send = ts_send
        self.delivered: dict[str, BookSnapshot] | None = {} if measured else None

    def note_delivered(self, snapshot: BookSnapshot) -> None:
        """Record that a message of ``snapshot`` went out in this tick. O(1)."""
        if self.delivered is not None:
            self.delivered[snapshot.instrument] = snapshot


class ChannelSource(Protocol):
    """One channel; see the module docstring. Every method is called on the event loop
    and never awaits.

    ``keyed_messages`` is True when a message's outbox key is the topic of the
    subscription it serves (``bbo``, ``book``, ``nbbo``); False when a channel's
    messages have keys of their own under one subscription per connection (``status``
    per instrument, ``profit`` per position, ``metrics``), so that leaving the
    subscription drops every queued message of the channel.
    """

    @property
    def channel(self) -> Channel: ...

    @property
    def keyed_messages(self) -> bool: ...

    def granted(self, request: SubscriptionRequest) -> SubscriptionRequest:
        """The subscribe request as granted: its parameter filled in (``book``: the
        depth) or ``RequestError`` when out of range. Others return it unchanged."""
        ...

    def add(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        """``subscriber`` (a crowd) now holds ``key``."""
        ...

    def remove(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        """``subscriber`` no longer holds ``key`` (it held it)."""
        ...

    def send_current(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        """Offer a new subscriber of ``key`` the current state, unless a pending tick is
        about to deliver it to its crowd anyway (a message is never sent twice)."""
        ...

    def publish(self, tick: Tick) -> bool:
        """The tick: encode each changed value once and offer it to the crowds holding
        it. True when the source has more than one tick's work left (the fan-out then
        runs another tick in the next loop iteration, after the loop served its I/O)."""
        ...


class Engine(Protocol):
    """What a source is given by the fan-out it serves."""

    @property
    def counters(self) -> Counters:
        """Running totals; a source counts each message it encodes (``messages_encoded``)."""
        ...

    @property
    def clock(self) -> Callable[[], int]:
        """ns since the epoch: stamps ``ts_send`` of what ``send_current`` encodes."""
        ...

    def request_tick(self) -> None:
        """Have a publish tick run soon (one per loop iteration however many ask)."""
        ...

    def flush_now(self) -> None:
        """Write what was offered outside a tick now (``metrics`` reports)."""
        ...


def offer_each(subscribers: Iterable[Subscriber], key: Topic, message: bytes) -> None:
    """Offer one encoded message to every subscriber of its key: the delivery loop."""
    for subscriber in subscribers:
        subscriber.offer(key, message)


class Audience:
    """The subscribers of each key of a channel. O(1) per change."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[str, set[Subscriber]] = {}

    def add(self, key: str, subscriber: Subscriber) -> bool:
        """Add ``subscriber`` to ``key``; True when it is the key's first."""
        subscribers = self._by_key.get(key)
        if subscribers is None:
            self._by_key[key] = {subscriber}
            return True
        subscribers.add(subscriber)
        return False

    def remove(self, key: str, subscriber: Subscriber) -> bool:
        """Remove ``subscriber`` from ``key``; True when it was the key's last."""
        subscribers = self._by_key[key]
        subscribers.discard(subscriber)
        if subscribers:
            return False
        del self._by_key[key]
        return True

    def of(self, key: str) -> set[Subscriber] | None:
        """The subscribers of ``key`` (``None``: none)."""
        return self._by_key.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key
