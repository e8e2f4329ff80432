"""The ``metrics`` channel: the server's counters and latencies, once per interval.

Channel-wide. While anyone subscribes, a timer sends the ``provider``'s content every
``interval`` seconds; with ``interval=None`` there is no timer and the provider's owner
calls ``publish_now`` on its own clock (``publish.metrics.Metrics`` once per report). On
subscribe: the current metrics. Not tick-driven: a report is written when it is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from publish.channels.source import CHANNEL_WIDE, Engine, Subscriber, Tick, offer_each
from publish.protocol import Channel, SubscriptionRequest, encode_metrics

MetricsProvider = Callable[[], Mapping[str, object]]
"""Returns the content of one ``metrics`` message (JSON-able values)."""

METRICS_TOPIC = (Channel.METRICS, CHANNEL_WIDE)


class MetricsChannel:
    channel = Channel.METRICS
    keyed_messages = False

    def __init__(
        self, engine: Engine, provider: MetricsProvider, *, interval: float | None
    ) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("the metrics interval must be positive")
        self._engine = engine
        self._provider = provider
        self._interval = interval
        self._timer: asyncio.TimerHandle | None = None
        self._subscribers: set[Subscriber] = set()

    def granted(self, request: SubscriptionRequest) -> SubscriptionRequest:
        return request

    def add(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._subscribers.add(subscriber)
        self._start_timer()

    def remove(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        self._subscribers.discard(subscriber)
        if not self._subscribers and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def send_current(self, subscriber: Subscriber, key: str, parameter: int) -> None:
        message = self._encode()  # the content is taken before this message is counted
        self._engine.counters.messages_encoded += 1
        subscriber.offer(METRICS_TOPIC, message)

    def publish(self, tick: Tick) -> bool:
        return False

    def publish_now(self) -> None:
        """Send the metrics to the channel's subscribers now, written at once: each report
        is sent, even several in one loop iteration. O(subscribers)."""
        if not self._subscribers:
            return
        message = self._encode()
        self._engine.counters.messages_encoded += 1
        offer_each(self._subscribers, METRICS_TOPIC, message)
        self._engine.flush_now()

    def _encode(self) -> bytes:
        return encode_metrics(self._provider(), self._engine.clock())

    def _start_timer(self) -> None:
        if self._timer is None and self._interval is not None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._subscribers:
            self.publish_now()
            self._start_timer()
