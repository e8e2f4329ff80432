"""Positions of accounts nobody watches: the engine keeps them as they are and marks them
when the account's first subscriber arrives. Against the real fan-out, with a member that
records what it is offered (no sockets)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from book.fixed import parse_fixed
from book.status import InstrumentState
from publish.fanout import Fanout, TickMessages, Topic
from publish.position import Position, PositionSide
from publish.profit import ProfitEngine
from publish.protocol import Channel
from tests.publish.support import (
    BTC,
    ETH,
    TS_SEND,
    Feed,
    clock,
    new_registry,
    tracked_by_type,
    tracked_growth,
)


class Member:
    """A session as the fan-out sees it: records the messages it is offered."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []

    def offer(self, key: Topic, message: bytes) -> None:
        self.messages.append(orjson.loads(message))

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        for key, message in messages.items():
            self.offer(key, message)

    def take_tick(self, tick: TickMessages) -> None:
        self.offer_all(tick.messages)

    def flush(self) -> None:
        pass


def position(position_id: str, instrument: str = BTC, *, closed_ts: int | None = None) -> Position:
    return Position(
        id=position_id,
        account="acct-1",
        instrument=instrument,
        side=PositionSide.BUY,
        qty=parse_fixed("2"),
        entry_price=parse_fixed("100"),
        opened_ts=1,
        closed_ts=closed_ts,
    )


def marked(position_id: str, instrument: str, mark: str, pnl: str, seq: int) -> dict[str, object]:
    return {
        "type": "profit",
        "account": "acct-1",
        "position_id": position_id,
        "instrument": instrument,
        "side": "buy",
        "qty": "2",
        "entry": "100",
        "mark": mark,
        "pnl": pnl,
        "seq": seq,
        "ts_send": TS_SEND,
    }


def total(pnl: str, positions: int) -> dict[str, object]:
    return {
        "type": "profit_total",
        "account": "acct-1",
        "pnl": pnl,
        "positions": positions,
        "unmarked": 0,
        "ts_send": TS_SEND,
    }


def new_engine() -> tuple[Fanout, ProfitEngine, Feed]:
    registry = new_registry()
    feed = Feed(registry)
    fanout = Fanout(registry, clock=clock, metrics_interval=None)
    engine = ProfitEngine(registry, fanout)
    for instrument in (BTC, ETH):
        feed.status(instrument, InstrumentState.LIVE)
    feed.quote(BTC, ("101", "1"), ("102", "1"))
    feed.quote(ETH, ("99", "1"), ("100", "1"))
    return fanout, engine, feed


def test_positions_opened_unwatched_are_marked_when_the_first_subscriber_arrives() -> None:
    fanout, engine, _ = new_engine()
    engine.position_opened(position("p-1"))
    engine.position_opened(position("p-2", ETH))
    engine._check()
    first = Member()
    fanout.subscribe(first, [(Channel.PROFIT, "acct-1", 0)])
    assert first.messages == [
        marked("p-1", BTC, "101", "2", 1),
        marked("p-2", ETH, "99", "-2", 1),
        total("0", 2),
    ]
    engine._check()
    fanout.leave(first)
    # Unwatched again: one position opens, a marked one and the new one close, one more opens.
    engine.position_opened(position("p-3"))
    engine.position_closed(position("p-1", closed_ts=2))
    engine.position_opened(position("p-4", ETH))
    engine.position_closed(position("p-3", closed_ts=3))
    assert engine.positions == 2
    engine._check()
    second = Member()
    fanout.subscribe(second, [(Channel.PROFIT, "acct-1", 0)])
    assert second.messages == [
        marked("p-2", ETH, "99", "-2", 1),
        marked("p-4", ETH, "99", "-2", 1),
        total("-4", 2),
    ]
    assert engine.watched_positions == 2
    engine._check()


def test_an_account_whose_last_position_closes_unwatched_is_forgotten() -> None:
    _, engine, _ = new_engine()
    engine.position_opened(position("p-1"))
    engine.position_closed(position("p-1", closed_ts=2))
    engine.position_closed(position("p-1", closed_ts=2))  # twice: nothing to close
    assert engine.positions == 0
    assert engine._accounts == {}
    engine._check()


def test_an_unwatched_position_costs_the_collector_no_object_of_the_engines() -> None:
    _, engine, _ = new_engine()
    engine.position_opened(position("first"))  # the account itself
    positions = [position(f"p-{n}") for n in range(1000)]
    before = tracked_by_type()
    for opened in positions:
        engine.position_opened(opened)
    assert tracked_growth(before, at_least=100) == {}  # no mark, no key tuple: nothing grew
    engine._check()
