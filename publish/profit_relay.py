"""The ``profit`` channel of an edge: frames made elsewhere (a positions shard), relayed.

In one process the ``profit`` channel's source is ``publish.profit.ProfitEngine``; on an
edge of a cluster it is a ``ProfitRelay``, the other implementation of the same
``ChannelSource``. Subscriptions are authorized by the session exactly as in one process
(a connection may only subscribe to its own account); the relay then asks its
``ProfitFeed`` to ``watch`` an account when its first subscriber arrives and to
``unwatch`` it when its last one leaves, and the feed hands it the account's frames
(``receive``) as the shard publishes them: already encoded, relayed byte for byte.

The relay keeps the latest frame of every open position of a watched account and its
``profit_total``, so a later subscriber of the same account is sent the current state at
once, as in one process; a position's ``profit_closed`` frame is relayed and drops it.
Outbox keys are those of the engine (``(profit, position_id)``, ``(profit, "")`` for the
total), so a slow subscriber keeps only the latest frame per position.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from publish.channels import Subscriber, Tick, Topic
from publish.fanout import Fanout
from publish.profit import is_closed_frame
from publish.protocol import Channel, SubscriptionRequest


class ProfitFeed(Protocol):
    """Where an edge's profit frames come from (the bus)."""

    def watch(self, account: str) -> None:
        """Start delivering the account's frames to the relay, its current state first."""
        ...

    def unwatch(self, account: str) -> None:
        """Stop delivering the account's frames."""
        ...


@dataclass(slots=True, eq=False)
class _Watched:
    subscribers: set[Subscriber] = field(default_factory=set)
    current: dict[Topic, bytes] = field(default_factory=dict)
    """The latest frame of every open position, and the total."""
    pending: dict[Topic, bytes] = field(default_factory=dict)
    """Frames received since the last tick, offered at the next one."""


class ProfitRelay:
    """The ``profit`` channel source of an edge; see the module docstring. Every method
    runs on the event loop and never awaits."""

    channel = Channel.PROFIT
    keyed_messages = False

    def __init__(self, fanout: Fanout, feed: ProfitFeed) -> None:
        self._fanout = fanout
        self._feed = feed
        self._accounts: dict[str, _Watched] = {}
        self._touched: set[_Watched] = set()
        fanout.add_source(self)

    @property
    def watched(self) -> list[str]:
        """Accounts with at least one subscriber here."""
        return list(self._accounts)

    def receive(self, account: str, frames: Iterable[tuple[str, bytes]], *, whole: bool) -> None:
        """Frames of ``account`` (key: the position id, ``""`` for the total), in the order
        made. ``whole``: they are the account's whole current state (a watch's answer),
        replacing what the relay had. Frames of an account nobody watches are dropped.
        O(frames)."""
        watched = self._accounts.get(account)
        if watched is None:
            return
        if whole:
            watched.current.clear()
        for position_id, frame in frames:
            key: Topic = (Channel.PROFIT, position_id)
            if is_closed_frame(frame):
                watched.current.pop(key, None)
            else:
                watched.current[key] = frame
            watched.pending[key] = frame
        if watched.pending:
            self._touched.add(watched)
            self._fanout.request_tick()

    # -- the fan-out's channel source -------------------------------------------------------

    def granted(self, request: SubscriptionRequest) -> SubscriptionRequest:
        return request

    def add(self, subscriber: Subscriber, key: str, parameter: int = 0) -> None:
        watched = self._accounts.get(key)
        if watched is None:
            watched = self._accounts[key] = _Watched()
            self._feed.watch(key)
        watched.subscribers.add(subscriber)

    def send_current(self, subscriber: Subscriber, key: str, parameter: int = 0) -> None:
        watched = self._accounts[key]
        if watched.current:
            subscriber.offer_all(watched.current)

    def remove(self, subscriber: Subscriber, key: str, parameter: int = 0) -> None:
        watched = self._accounts.get(key)
        if watched is None:
            return
        watched.subscribers.discard(subscriber)
        if not watched.subscribers:
            del self._accounts[key]
            self._touched.discard(watched)
            self._feed.unwatch(key)

    def publish(self, tick: Tick) -> bool:
        touched, self._touched = self._touched, set()
        for watched in touched:
            pending, watched.pending = watched.pending, {}
            for subscriber in watched.subscribers:
                subscriber.offer_all(pending)
        return False
