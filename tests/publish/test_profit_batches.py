"""The profit engine sends each account one batch per pass, not one per tick: with
positions spread over instruments and more dirty instruments than a tick marks, the
accounts a tick marks are held until every instrument waiting when the pass began is
marked, then flushed once. Against the real fan-out and crowds, with members that record
what they are written (no sockets)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import orjson
import pytest

from book.fixed import parse_fixed
from book.status import InstrumentState
from publish.fanout import Fanout, TickMessages, Topic
from publish.position import Position, PositionSide
from publish.profit import FLUSH_MESSAGES_PER_MARK, ProfitEngine
from publish.protocol import Channel
from tests.publish.support import Feed, clock, new_registry

INSTRUMENTS = tuple(f"binance:C{number}-USDT" for number in range(6))
ACCOUNTS = ("acct-0", "acct-1", "acct-2", "acct-3")
LONE = "acct-lone"
"""An account with one position, on an instrument no change touches."""
QUIET = "kraken:BTC-USD"


class Member:
    """A session as the fan-out sees it, recording each write it would make: one per
    ``take_tick`` (its crowd's messages of a tick) or per message offered to it alone
    (its current state)."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.writes: list[tuple[int, list[dict[str, object]]]] = []
        """(tick number, messages) of every write."""

    def offer(self, key: Topic, message: bytes) -> None:
        self.writes.append((self.fanout.counters.ticks, [orjson.loads(message)]))

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        for key, message in messages.items():
            self.offer(key, message)

    def take_tick(self, tick: TickMessages) -> None:
        messages = [orjson.loads(message) for message in tick.messages.values()]
        self.writes.append((self.fanout.counters.ticks, messages))

    def flush(self) -> None:
        pass

    def batches(self) -> list[tuple[int, list[dict[str, object]]]]:
        """The writes that end with a total: the account's batches."""
        return [(tick, m) for tick, m in self.writes if m[-1]["type"] == "profit_total"]


def position(account: str, instrument: str, *, long: bool = True) -> Position:
    return Position(
        id=f"{account}/{instrument}",
        account=account,
        instrument=instrument,
        side=PositionSide.BUY if long else PositionSide.SELL,
        qty=parse_fixed("1"),
        entry_price=parse_fixed("100"),
        opened_ts=1,
    )


class Desk:
    """Every account of ``ACCOUNTS`` holds one position on each of ``INSTRUMENTS`` (long on
    even ones, short on odd ones), and ``LONE`` one on ``QUIET``; each account has one
    member subscribed through the fan-out, current state received. With
    ``marks_per_tick`` = the accounts, a tick marks one instrument."""

    def __init__(self, marks_per_tick: int = len(ACCOUNTS), held_batch: int = 16) -> None:
        self.registry = new_registry((*INSTRUMENTS, QUIET))
        self.feed = Feed(self.registry)
        self.fanout = Fanout(self.registry, clock=clock, metrics_interval=None)
        self.engine = ProfitEngine(
            self.registry, self.fanout, marks_per_tick=marks_per_tick, held_batch=held_batch
        )
        for instrument in (*INSTRUMENTS, QUIET):
            self.feed.status(instrument, InstrumentState.LIVE)
            self.feed.quote(instrument, ("100", "1"), ("101", "1"))
        for account in ACCOUNTS:
            for number, instrument in enumerate(INSTRUMENTS):
                self.engine.position_opened(position(account, instrument, long=number % 2 == 0))
        self.engine.position_opened(position(LONE, QUIET))
        self.members = {account: Member(self.fanout) for account in (*ACCOUNTS, LONE)}
        for account, member in self.members.items():
            self.fanout.subscribe(member, [(Channel.PROFIT, account, 0)])

    async def settle(self) -> None:
        """Run ticks until none is pending; then forget what was written so far."""
        await self.idle()
        for member in self.members.values():
            member.writes.clear()

    async def next_tick(self) -> None:
        """One loop turn, in which the pending publish tick runs."""
        ticks = self.fanout.counters.ticks
        await asyncio.sleep(0)
        assert self.fanout.counters.ticks == ticks + 1
        self.engine._check()

    async def idle(self) -> None:
        """Until the loop has turned without a tick."""
        while True:
            ticks = self.fanout.counters.ticks
            for _ in range(3):
                await asyncio.sleep(0)
            self.engine._check()
            if self.fanout.counters.ticks == ticks:
                return

    def change_all(self, bid: int) -> None:
        """Every instrument's bid to ``bid`` and ask to ``bid + 1``, in one loop turn."""
        for instrument in INSTRUMENTS:
            self.feed.quote(instrument, (str(bid), "1"), (str(bid + 1), "1"))


def marks(messages: list[dict[str, object]]) -> dict[object, object]:
    """position id -> mark of each profit message."""
    return {m["position_id"]: m["mark"] for m in messages if m["type"] == "profit"}


def latest_marks(account: str, bid: int) -> dict[object, object]:
    """Every position of ``account`` marked at bid ``bid`` (longs) or ask ``bid + 1``."""
    return {
        f"{account}/{instrument}": str(bid if number % 2 == 0 else bid + 1)
        for number, instrument in enumerate(INSTRUMENTS)
    }


async def test_each_account_gets_one_batch_per_pass_with_the_latest_marks_of_all() -> None:
    desk = Desk()
    await desk.settle()
    ticks = desk.fanout.counters.ticks
    desk.change_all(110)
    desk.change_all(120)  # while they wait: each keeps its place, at the newest prices
    await desk.idle()

    assert desk.fanout.counters.ticks - ticks == len(INSTRUMENTS)  # one instrument a tick
    last_tick = ticks + len(INSTRUMENTS)
    for account in ACCOUNTS:
        batches = desk.members[account].writes
        assert [tick for tick, _ in batches] == [last_tick]  # one write, when the pass ends
        (_, messages), *_ = batches
        assert marks(messages) == latest_marks(account, 120)
        assert len(messages) == len(INSTRUMENTS) + 1
        # longs: 3 * (120 - 100); shorts: 3 * (100 - 121)
        assert messages[-1] == {
            "type": "profit_total",
            "account": account,
            "pnl": "-3",
            "positions": len(INSTRUMENTS),
            "unmarked": 0,
            "ts_send": clock(),
        }
    assert desk.members[LONE].writes == []


async def test_a_single_change_with_an_empty_queue_goes_out_in_the_tick_that_marks_it() -> None:
    desk = Desk()
    await desk.settle()
    ticks = desk.fanout.counters.ticks
    desk.feed.quote(INSTRUMENTS[2], ("130", "1"), ("131", "1"))
    await desk.next_tick()

    for account in ACCOUNTS:
        assert [(tick - ticks, marks(m)) for tick, m in desk.members[account].writes] == [
            (1, {f"{account}/{INSTRUMENTS[2]}": "130"})
        ]
    await desk.idle()
    assert desk.fanout.counters.ticks - ticks == 1


async def test_changes_during_a_pass_wait_for_the_next_one_and_cannot_prolong_it() -> None:
    desk = Desk()
    await desk.settle()
    ticks = desk.fanout.counters.ticks
    desk.change_all(110)
    # Every tick of the pass, the instrument it just marked changes again (re-queued
    # behind the pass): the pass still ends after the six instruments waiting at its start.
    for number, instrument in enumerate(INSTRUMENTS):
        await desk.next_tick()
        desk.feed.quote(instrument, (str(140 + number), "1"), None)
    await desk.idle()

    for account in ACCOUNTS:
        writes = desk.members[account].writes
        assert [tick - ticks for tick, _ in writes] == [6, 12]
        first, second = (m for _, m in writes)
        assert marks(first) == latest_marks(account, 110)
        assert marks(second) == {
            f"{account}/{instrument}": str(140 + number) if number % 2 == 0 else None
            for number, instrument in enumerate(INSTRUMENTS)
        }


async def test_a_held_account_goes_out_once_its_batch_is_big_enough() -> None:
    # One instrument a tick, one message per account each: with batches of 2 an account
    # is flushed every second tick of the pass, not only at its end.
    desk = Desk(held_batch=2)
    await desk.settle()
    ticks = desk.fanout.counters.ticks
    desk.change_all(110)
    await desk.idle()

    for account in ACCOUNTS:
        writes = desk.members[account].writes
        assert [tick - ticks for tick, _ in writes] == [2, 4, 6]
        assert [len(marks(messages)) for _, messages in writes] == [2, 2, 2]
        merged = {k: v for _, messages in writes for k, v in marks(messages).items()}
        assert merged == latest_marks(account, 110)


async def test_a_flush_larger_than_a_ticks_bound_is_spread_over_ticks() -> None:
    # One mark a tick: a tick's flushes stop once FLUSH_MESSAGES_PER_MARK messages are
    # out; each account's batch is 7 messages, so the pass's four accounts go out one a
    # tick, the first in the tick that ends the pass.
    desk = Desk(marks_per_tick=1)
    assert len(INSTRUMENTS) + 1 > FLUSH_MESSAGES_PER_MARK
    await desk.settle()
    ticks = desk.fanout.counters.ticks
    desk.change_all(110)
    await desk.idle()

    flushed_at = sorted(
        tick - ticks for account in ACCOUNTS for tick, _ in desk.members[account].writes
    )
    assert flushed_at == [len(INSTRUMENTS) + k for k in range(len(ACCOUNTS))]
    for account in ACCOUNTS:
        ((_, messages),) = desk.members[account].writes
        assert marks(messages) == latest_marks(account, 110)


async def test_a_crowd_that_leaves_during_a_hold_is_offered_nothing() -> None:
    desk = Desk()
    await desk.settle()
    desk.change_all(110)
    await desk.next_tick()
    await desk.next_tick()  # two instruments marked: every account is held
    leaving = desk.members["acct-1"]
    desk.fanout.leave(leaving)
    await desk.idle()

    assert leaving.writes == []
    for account in ("acct-0", "acct-2", "acct-3"):
        ((_, messages),) = desk.members[account].writes
        assert marks(messages) == latest_marks(account, 110)


async def test_closed_and_fresh_positions_of_held_accounts_go_with_the_pass() -> None:
    desk = Desk()
    await desk.settle()
    ticks = desk.fanout.counters.ticks
    desk.change_all(110)
    await desk.next_tick()
    await desk.next_tick()  # the first two instruments marked; acct-0 and acct-1 are held
    engine = desk.engine
    engine.position_closed(position("acct-0", INSTRUMENTS[0]))  # marked in this pass
    engine.position_closed(position("acct-0", INSTRUMENTS[5]))  # waiting in this pass
    engine.position_opened(position("acct-1", QUIET))
    engine.position_closed(position(LONE, QUIET))  # not held: at this tick's end
    await desk.next_tick()

    assert [(tick - ticks, [m["type"] for m in ms]) for tick, ms in desk.members[LONE].writes] == [
        (3, ["profit_closed", "profit_total"])
    ]
    assert desk.members["acct-0"].writes == []
    assert desk.members["acct-1"].writes == []
    await desk.idle()

    ((tick, closing),) = desk.members["acct-0"].writes
    assert tick - ticks == len(INSTRUMENTS)
    closed = {m["position_id"] for m in closing if m["type"] == "profit_closed"}
    assert closed == {f"acct-0/{INSTRUMENTS[0]}", f"acct-0/{INSTRUMENTS[5]}"}
    survivors = latest_marks("acct-0", 110)
    for gone in closed:
        del survivors[gone]
    assert marks(closing) == survivors  # no profit frame of a closed position, before or after
    assert closing[-1]["positions"] == len(INSTRUMENTS) - 2

    ((tick, opening),) = desk.members["acct-1"].writes
    assert tick - ticks == len(INSTRUMENTS)
    assert marks(opening) == {**latest_marks("acct-1", 110), f"acct-1/{QUIET}": "100"}


class Collector:
    """Collects what ``send_current`` offers: an account's current state."""

    def __init__(self) -> None:
        self.messages: dict[Topic, bytes] = {}

    def offer(self, key: Topic, message: bytes) -> None:
        self.messages[key] = message

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        self.messages.update(messages)


def without_ts(message: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in message.items() if key != "ts_send"}


@pytest.mark.parametrize("seed", range(12))
async def test_random_changes_opens_closes_and_leaves_converge_to_the_current_state(
    seed: int,
) -> None:
    """Whatever the holds, once the engine is idle every subscriber's latest frame of each
    position and its latest total are the account's current state, and a closed
    position's last frame is its ``profit_closed``."""
    chance = random.Random(seed)
    desk = Desk(marks_per_tick=chance.choice((1, 3, 5)))
    await desk.settle()
    subscribed = set(desk.members)
    opened = 0
    open_positions = {
        f"{account}/{instrument}": position(account, instrument, long=number % 2 == 0)
        for account in ACCOUNTS
        for number, instrument in enumerate(INSTRUMENTS)
    }
    for _ in range(300):
        roll = chance.random()
        if roll < 0.45:
            bid = chance.randrange(90, 110)
            ask = None if chance.random() < 0.1 else (str(bid + 1), "1")
            desk.feed.quote(chance.choice(INSTRUMENTS), (str(bid), "1"), ask)
        elif roll < 0.55:
            opened += 1
            account, instrument = chance.choice(ACCOUNTS), chance.choice(INSTRUMENTS)
            fresh = Position(
                id=f"new-{opened}",
                account=account,
                instrument=instrument,
                side=chance.choice(list(PositionSide)),
                qty=parse_fixed("2"),
                entry_price=parse_fixed("99"),
                opened_ts=1,
            )
            open_positions[fresh.id] = fresh
            desk.engine.position_opened(fresh)
        elif roll < 0.62 and open_positions:
            gone = open_positions.pop(chance.choice(sorted(open_positions)))
            desk.engine.position_closed(gone.closed_at(2))
        elif roll < 0.67:
            account = chance.choice(ACCOUNTS)
            member = desk.members[account]
            if account in subscribed:
                desk.fanout.leave(member)
                subscribed.discard(account)
            else:
                member.writes.clear()
                desk.fanout.subscribe(member, [(Channel.PROFIT, account, 0)])
                subscribed.add(account)
        else:
            await asyncio.sleep(0)  # a loop turn: a tick when one is pending
            desk.engine._check()
    await desk.idle()

    for account in subscribed - {LONE}:
        latest: dict[object, dict[str, object]] = {}
        for _, messages in desk.members[account].writes:
            for message in messages:
                latest[message.get("position_id", "total")] = without_ts(message)
        current = Collector()
        desk.engine.send_current(current, account)
        expected = {
            key[1] or "total": without_ts(orjson.loads(message))
            for key, message in current.messages.items()
        }
        closed = {key: m for key, m in latest.items() if m["type"] == "profit_closed"}
        assert {key: m for key, m in latest.items() if key not in closed} == expected
        assert not closed.keys() & {p for p, o in open_positions.items() if o.account == account}
