"""The channels the fan-out serves, one module each, all through one interface.

``source.ChannelSource`` is what a channel is to the engine. The market-data channels
(``bbo``, ``book``, ``nbbo``, ``status``, ``metrics``) are built by ``market_data``;
channels produced by other engines plug in the same way (``profit``:
``publish.profit.ProfitEngine``). A new channel is its own module here, a ``Channel``
member and an encoder in ``publish.protocol``, and a line in ``market_data`` (or an
``add_source`` call by its engine).
"""

from __future__ import annotations

from book.registry import BookRegistry
from publish.channels.bbo import BboChannel
from publish.channels.book import DEFAULT_BOOK_DEPTH, BookChannel
from publish.channels.metrics import MetricsChannel, MetricsProvider
from publish.channels.nbbo import NbboChannel
from publish.channels.source import (
    CHANNEL_WIDE,
    ChannelSource,
    Engine,
    Spec,
    Subscriber,
    Tick,
    Topic,
)
from publish.channels.status import StatusChannel


def market_data(
    registry: BookRegistry,
    engine: Engine,
    *,
    book_depth: int,
    metrics: MetricsProvider,
    metrics_interval: float | None,
) -> list[ChannelSource]:
    """The market-data channels, in the order a tick publishes them."""
    return [
        StatusChannel(registry, engine),
        BboChannel(registry, engine),
        BookChannel(registry, engine, max_depth=book_depth),
        NbboChannel(registry, engine),
        MetricsChannel(engine, metrics, interval=metrics_interval),
    ]


__all__ = [
    "CHANNEL_WIDE",
    "DEFAULT_BOOK_DEPTH",
    "BboChannel",
    "BookChannel",
    "ChannelSource",
    "Engine",
    "MetricsChannel",
    "MetricsProvider",
    "NbboChannel",
    "Spec",
    "StatusChannel",
    "Subscriber",
    "Tick",
    "Topic",
    "market_data",
]
