"""Make-before-break promotion: only a standby whose every book is live and uncrossed
takes over, and it publishes exactly those books; its shadow is ``ready`` only while
every book is live."""

from __future__ import annotations

from book.fixed import parse_fixed
from book.registry import BookRegistry
from book.status import InstrumentState
from feeds.coinbase.adapter import CoinbaseAdapter
from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.runner import FeedConnection, FeedRunner
from feeds.shadow import ShadowSink
from feeds.symbols import SymbolMap

BTC, ETH = "coinbase:BTC-USD", "coinbase:ETH-USD"


def book(name: str, bid: str, ask: str) -> BookSnapshotEvent:
    one = parse_fixed("1")
    return BookSnapshotEvent(name, ((parse_fixed(bid), one),), ((parse_fixed(ask), one),))


def crossing(name: str, bid: str) -> BookDeltaEvent:
    return BookDeltaEvent(name, ((parse_fixed(bid), parse_fixed("1")),), ())


class Rotation:
    """A runner's publishing connection (books at 100/101) and a standby whose shadow
    books (200/202) are all live."""

    def __init__(self) -> None:
        self.registry = BookRegistry()
        symbols = SymbolMap("coinbase", {"BTC-USD": "BTC-USD", "ETH-USD": "ETH-USD"})
        self.runner = FeedRunner(
            CoinbaseAdapter(symbols), sink=self.registry, instruments=[BTC, ETH], capture_depth=5
        )
        self.old = FeedConnection(self.runner, self.registry, {})
        for name in (BTC, ETH):
            self.old.session.receive_event(book(name, "100", "101"), 1)
        self.shadow = ShadowSink(self.runner.instruments, self.registry)
        self.new = FeedConnection(self.runner, self.shadow, self.old.session.seqs())
        for name in (BTC, ETH):
            self.new.session.receive_event(book(name, "200", "202"), 2)
        assert self.shadow.ready.is_set()

    def promote(self) -> bool:
        return self.runner._promote(self.old, self.new, self.shadow)

    def published_bid(self, name: str) -> int | None:
        published = self.registry.get(name)
        assert published is not None
        return published.bid


async def test_a_standby_book_gone_stale_unsets_ready_and_is_not_promoted() -> None:
    rotation = Rotation()
    rotation.new.session.receive_event(crossing(BTC, "300"), 3)  # the standby resets BTC
    assert not rotation.shadow.ready.is_set()
    assert not rotation.promote()
    assert rotation.published_bid(BTC) == parse_fixed("100")
    assert rotation.registry.is_live(BTC)


async def test_a_standby_with_a_book_not_live_is_not_promoted() -> None:
    rotation = Rotation()
    rotation.new.session.syncs[BTC].reset()
    assert not rotation.promote()
    assert rotation.published_bid(BTC) == parse_fixed("100")


async def test_a_crossed_standby_book_is_not_promoted() -> None:
    rotation = Rotation()
    rotation.new.session.syncs[BTC].book.apply(((parse_fixed("300"), parse_fixed("1")),), ())
    assert not rotation.promote()
    assert rotation.published_bid(BTC) == parse_fixed("100")
    assert rotation.published_bid(ETH) == parse_fixed("100")  # all or nothing


async def test_a_promoted_standby_publishes_its_books_with_growing_seq() -> None:
    rotation = Rotation()
    registry = rotation.registry
    before = {name: registry.get(name) for name in (BTC, ETH)}
    assert rotation.promote()
    for name in (BTC, ETH):
        published, previous = registry.get(name), before[name]
        assert published is not None and previous is not None
        assert (published.bid, published.ask) == (parse_fixed("200"), parse_fixed("202"))
        assert published.seq > previous.seq
        assert registry.status(name).state is InstrumentState.LIVE  # type: ignore[union-attr]
    # From now on the new connection writes downstream and the old one nowhere.
    rotation.new.session.receive_event(book(BTC, "210", "211"), 4)
    rotation.old.session.receive_event(book(BTC, "110", "111"), 4)
    assert rotation.published_bid(BTC) == parse_fixed("210")
