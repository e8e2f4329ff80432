"""Make-before-break promotion: only a standby whose every book is live and uncrossed
takes over, and it publishes exactly those books."""

from __future__ import annotations

from book.fixed import parse_fixed as to_fixed
from book.registry import BookRegistry
from book.status import InstrumentState
from feeds.coinbase.adapter import CoinbaseAdapter
from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.runner import FeedConnection, FeedRunner
from feeds.symbols import SymbolMap

BTC, ETH = "coinbase:BTC-USD", "coinbase:ETH-USD"


def book(name: str, bid: str, ask: str) -> BookSnapshotEvent:
    return BookSnapshotEvent(
        name, ((to_fixed(bid), to_fixed("1")),), ((to_fixed(ask), to_fixed("1")),)
    )


def crossing(name: str, bid: str) -> BookDeltaEvent:
    return BookDeltaEvent(name, ((to_fixed(bid), to_fixed("1")),), ())


def rig() -> tuple[BookRegistry, FeedRunner, FeedConnection, FeedConnection]:
    registry = BookRegistry()
    adapter = CoinbaseAdapter(SymbolMap("coinbase", {"BTC-USD": "BTC-USD", "ETH-USD": "ETH-USD"}))
    runner = FeedRunner(adapter, registry=registry, instruments=[BTC, ETH], capture_depth=5)
    old = FeedConnection(runner, publishing=True)
    for name in (BTC, ETH):
        old._on_event(book(name, "100", "101"), 1)
    new = FeedConnection(runner, publishing=False)
    for name in (BTC, ETH):
        new._on_event(book(name, "200", "202"), 2)
    assert new.ready.is_set()
    return registry, runner, old, new


async def test_a_standby_book_gone_stale_unsets_ready_and_is_not_promoted() -> None:
    registry, runner, old, new = rig()
    new._on_event(crossing(BTC, "300"), 3)  # the standby's BTC book is reset
    assert not new.ready.is_set()
    runner._promote(old, new)
    published = registry.get(BTC)
    assert published is not None and published.bid == to_fixed("100")
    assert registry.is_live(BTC)


async def test_a_standby_with_a_book_not_live_is_not_promoted() -> None:
    registry, runner, old, new = rig()
    new.dispatcher.syncs[BTC].reset()
    runner._promote(old, new)
    published = registry.get(BTC)
    assert published is not None and published.bid == to_fixed("100")


async def test_a_crossed_standby_book_is_not_promoted() -> None:
    registry, runner, old, new = rig()
    new.dispatcher.syncs[BTC].book.apply(((to_fixed("300"), to_fixed("1")),), ())
    runner._promote(old, new)
    published = registry.get(BTC)
    assert published is not None and published.bid == to_fixed("100")


async def test_a_promoted_standby_publishes_its_books_with_growing_seq() -> None:
    registry, runner, old, new = rig()
    before = {name: registry.get(name) for name in (BTC, ETH)}
    runner._promote(old, new)
    for name in (BTC, ETH):
        published, previous = registry.get(name), before[name]
        assert published is not None and previous is not None
        assert (published.bid, published.ask) == (to_fixed("200"), to_fixed("202"))
        assert published.seq > previous.seq
        assert registry.status(name).state is InstrumentState.LIVE  # type: ignore[union-attr]
