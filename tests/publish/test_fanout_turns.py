"""Crowds of bounded size, and flushing in turns: a large audience is written a turn at
a time, and a change that arrives meanwhile joins what the crowds still waiting will
write (``publish.fanout``'s module docstring). Recording sinks, no sockets."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from book.snapshot import BookSnapshot
from publish.fanout import Fanout
from publish.protocol import Channel
from tests.publish.support import (
    BTC,
    ETH,
    KRAKEN_BTC,
    Feed,
    bbo,
    clock,
    new_registry,
    wait_until,
)
from tests.publish.test_fanout import ASK, Client, ack, client, settle

ONE_AT_A_TIME = 1
"""A turn of one subscriber: each tick flushes one crowd (or session)."""


async def subscribe_all(clients: Sequence[Client], *instruments: str) -> None:
    """Subscribe each of ``clients`` to the bbo of ``instruments``; until all are acked."""
    for each in clients:
        each.send(op="subscribe", id=1, channel="bbo", instruments=list(instruments))
    await wait_until(
        lambda: all(len(each.sink.frames) == 1 for each in clients), what="acks", pause=0
    )


def request(op: str, request_id: int, instrument: str) -> bytes:
    """A bbo (un)subscribe request frame."""
    return orjson.dumps({"op": op, "id": request_id, "channel": "bbo", "instruments": [instrument]})


async def first_turn(clients: Sequence[Client]) -> list[int]:
    """Until one of ``clients`` is written to, checked between every two callbacks of the
    loop (so between the tick that wrote it and the next one): how many frames each has."""

    def counts() -> list[int]:
        return [len(each.sink.frames) for each in clients]

    await wait_until(lambda: max(counts()) == 2, what="a first turn", pause=0)
    return counts()


async def test_sessions_past_crowd_size_make_more_crowds_each_framed_once() -> None:
    registry = new_registry()
    feed, fanout = Feed(registry), Fanout(registry, clock=clock, crowd_size=2)
    async with (
        client(fanout) as a,
        client(fanout) as b,
        client(fanout) as c,
        client(fanout) as d,
        client(fanout) as e,
    ):
        everyone = (a, b, c, d, e)
        await subscribe_all(everyone, BTC, ETH)
        assert (fanout.crowds(), fanout.subscriptions()) == (1, 10)
        snapshot = feed.quote(BTC, ("1", "1"), ASK)
        await settle()
        writes = [each.sink.writes[1] for each in everyone]
        # Members of one crowd share one bytes object; crowds frame theirs each.
        assert writes[0] is writes[1] and writes[2] is writes[3]
        assert writes[0] is not writes[2] and writes[4] is not writes[2]
        expected = [ack(1, "bbo", BTC, ETH), bbo(BTC, snapshot.seq, ("1", "1"), ASK)]
        assert all(each.sink.messages() == expected for each in everyone)
    assert (fanout.crowds(), fanout.subscriptions()) == (0, 0)


async def test_a_change_joins_the_crowds_still_waiting_for_their_turn() -> None:
    registry = new_registry()
    feed = Feed(registry)
    fanout = Fanout(registry, clock=clock, crowd_size=1, turn_size=ONE_AT_A_TIME)
    async with client(fanout) as first, client(fanout) as second, client(fanout) as third:
        everyone = (first, second, third)
        await subscribe_all(everyone, BTC)
        old = feed.quote(BTC, ("1", "1"), ASK)
        counts = await first_turn(everyone)  # a tick published it, flushed one crowd only
        assert sorted(counts) == [1, 1, 2]
        new = feed.quote(BTC, ("2", "1"), ASK)  # before the next turn
        await settle()
    old_bbo = bbo(BTC, old.seq, ("1", "1"), ASK)
    new_bbo = bbo(BTC, new.seq, ("2", "1"), ASK)
    for each, count in zip(everyone, counts, strict=True):
        # Those still waiting when the new change came write it in their turn, conflated.
        assert each.sink.messages()[1:] == ([old_bbo, new_bbo] if count == 2 else [new_bbo])


async def test_a_tick_is_reported_written_once_every_crowd_it_offered_to_is() -> None:
    registry = new_registry()
    feed = Feed(registry)
    written: list[tuple[list[BookSnapshot], int]] = []
    fanout = Fanout(
        registry,
        clock=clock,
        crowd_size=1,
        turn_size=ONE_AT_A_TIME,
        on_written=lambda snapshots, at: written.append((list(snapshots), at)),
    )
    async with client(fanout) as first, client(fanout) as second, client(fanout) as third:
        everyone = (first, second, third)
        await subscribe_all(everyone, BTC)
        snapshot = feed.quote(BTC, ("1", "1"), ASK)
        assert sorted(await first_turn(everyone)) == [1, 1, 2]
        assert written == []  # two of its three crowds are still waiting
        await settle()
        assert [len(each.sink.frames) for each in everyone] == [2, 2, 2]
    assert written == [([snapshot], clock())]


async def test_a_session_that_moves_crowds_before_its_turn_still_gets_what_was_offered() -> None:
    registry = new_registry()
    feed = Feed(registry)
    fanout = Fanout(registry, clock=clock, crowd_size=2, turn_size=ONE_AT_A_TIME)
    async with client(fanout) as a, client(fanout) as b, client(fanout) as c, client(fanout) as d:
        everyone = (a, b, c, d)  # two crowds of two
        await subscribe_all(everyone, BTC)
        snapshot = feed.quote(BTC, ("1", "1"), ASK)
        counts = await first_turn(everyone)
        assert sorted(counts) == [1, 1, 2, 2]
        mover = everyone[counts.index(1)]
        # Between two turns: it leaves its crowd, still waiting, for a new one.
        mover.session.handle(request("subscribe", 2, ETH))
        await settle()
    expected = bbo(BTC, snapshot.seq, ("1", "1"), ASK)
    assert all(expected in each.sink.messages() for each in everyone)


async def test_what_a_session_unsubscribed_before_its_turn_is_not_written_to_it() -> None:
    registry = new_registry()
    feed = Feed(registry)
    fanout = Fanout(registry, clock=clock, crowd_size=1, turn_size=ONE_AT_A_TIME)
    async with client(fanout) as first, client(fanout) as second:
        everyone = (first, second)
        await subscribe_all(everyone, BTC, ETH)
        feed.quote(BTC, ("1", "1"), ASK)
        counts = await first_turn(everyone)
        waiting = everyone[counts.index(1)]
        # Its crowd of one follows it to {ETH}: the BTC change it had not written goes.
        waiting.session.handle(request("unsubscribe", 2, BTC))
        await settle()
    assert waiting.sink.messages()[1:] == [ack(2, "bbo", BTC, op="unsubscribe")]


async def test_a_reply_goes_out_at_the_next_turn_ahead_of_the_round() -> None:
    registry = new_registry()
    feed = Feed(registry)
    fanout = Fanout(registry, clock=clock, crowd_size=1, turn_size=ONE_AT_A_TIME)
    async with (
        client(fanout) as a,
        client(fanout) as b,
        client(fanout) as c,
        client(fanout) as trader,
    ):
        everyone = (a, b, c)
        await subscribe_all(everyone, BTC)
        feed.quote(BTC, ("1", "1"), ASK)
        assert sorted(await first_turn(everyone)) == [1, 1, 2]
        # An answer that came in between two turns (as a position's ack does, once its
        # batch commits): it does not wait for the two crowds still in the round.
        trader.session.outbox.reply(b'{"type":"ack","id":7}')
        await wait_until(lambda: bool(trader.sink.frames), what="the reply", pause=0)
        assert sorted(len(each.sink.frames) for each in everyone) == [1, 2, 2]
        await settle()
        assert [len(each.sink.frames) for each in everyone] == [2, 2, 2]
    assert trader.sink.messages() == [{"type": "ack", "id": 7}]


async def test_flush_replies_writes_the_queued_replies_at_once_and_nothing_else() -> None:
    registry = new_registry()
    feed = Feed(registry)
    fanout = Fanout(registry, clock=clock, crowd_size=1, turn_size=ONE_AT_A_TIME)
    async with client(fanout) as watcher, client(fanout) as trader:
        await subscribe_all([watcher, trader], BTC)
        snapshot = feed.quote(BTC, ("1", "1"), ASK)  # published by the next tick
        trader.session.outbox.reply(b'{"type":"ack","id":7}')
        fanout.flush_replies()  # no tick has run since: the ack is written now, alone
        assert [len(each.sink.frames) for each in (watcher, trader)] == [1, 2]
        assert trader.sink.messages()[1:] == [{"type": "ack", "id": 7}]
        fanout.flush_replies()  # nothing queued: nothing written
        assert len(trader.sink.frames) == 2
        await settle()
    quote = bbo(BTC, snapshot.seq, ("1", "1"), ASK)
    assert watcher.sink.messages()[1:] == [quote]
    assert trader.sink.messages()[1:] == [{"type": "ack", "id": 7}, quote]


async def test_a_session_joining_a_waiting_crowd_is_not_sent_what_it_already_had() -> None:
    registry = new_registry()
    feed = Feed(registry)
    fanout = Fanout(registry, clock=clock, crowd_size=2, turn_size=ONE_AT_A_TIME)
    async with client(fanout) as mover, client(fanout) as other:
        await subscribe_all([mover], BTC, KRAKEN_BTC)
        await subscribe_all([other], BTC, ETH)
        # One tick: KRAKEN_BTC queues the mover's crowd, then BTC queues the other's.
        feed.quote(KRAKEN_BTC, ("5", "1"), ASK)
        snapshot = feed.quote(BTC, ("1", "1"), ASK)
        await wait_until(lambda: len(mover.sink.frames) == 3, what="its turn", pause=0)
        assert len(other.sink.frames) == 1  # its crowd still waits, holding BTC
        # Between two turns the mover takes the other crowd's subscriptions and joins it.
        mover.session.handle(request("unsubscribe", 2, KRAKEN_BTC))
        mover.session.handle(request("subscribe", 3, ETH))
        await settle()
    btc = bbo(BTC, snapshot.seq, ("1", "1"), ASK)
    assert mover.sink.messages().count(btc) == 1
    assert other.sink.messages()[1:] == [btc]


async def test_a_connections_later_replies_of_one_round_go_out_together() -> None:
    registry = new_registry()
    fanout = Fanout(registry, clock=clock)
    async with client(fanout) as trader, client(fanout) as other:
        await subscribe_all([trader, other], BTC)
        outbox, sink = trader.session.outbox, trader.sink
        writes, other_writes = len(sink.writes), len(other.sink.writes)
        outbox.reply_now(b'{"type":"ack","id":1}')  # the round's first: written at once
        other.session.outbox.reply_now(b'{"type":"ack","id":2}')  # another connection's too
        outbox.reply_now(b'{"type":"ack","id":3}')  # the same connection again: queued
        outbox.reply_now(b'{"type":"ack","id":4}')
        assert len(sink.writes) == writes + 1
        assert len(other.sink.writes) == other_writes + 1
        fanout.flush_replies()  # the commit's replies: 3 and 4 in one write; a new round
        assert len(sink.writes) == writes + 2
        outbox.reply_now(b'{"type":"ack","id":5}')  # the next round's first: at once
        assert len(sink.writes) == writes + 3
    assert sink.messages()[1:] == [{"type": "ack", "id": n} for n in (1, 3, 4, 5)]
    assert other.sink.messages()[1:] == [{"type": "ack", "id": 2}]


async def test_reply_now_is_written_at_once_unless_something_is_queued_ahead_of_it() -> None:
    registry = new_registry()
    fanout = Fanout(registry, clock=clock)
    async with client(fanout) as trader, client(fanout, batch=True) as batched:
        outbox, sink = trader.session.outbox, trader.sink
        await subscribe_all([trader, batched], BTC)
        writes = len(sink.writes)
        outbox.reply_now(b'{"type":"ack","id":7}')  # nothing queued: one write, now
        assert sink.writes[writes:] == [b'\x81\x15{"type":"ack","id":7}']
        batched.session.outbox.reply_now(b'{"type":"ack","id":7}')  # its wire's frame
        assert batched.sink.messages()[-1] == [{"type": "ack", "id": 7}]
        # Behind a queued reply it is queued too, and keeps its order.
        outbox.reply(b'{"type":"ack","id":8}')
        outbox.reply_now(b'{"type":"ack","id":9}')
        assert len(sink.writes) == writes + 1
        fanout.flush_replies()
        assert len(sink.writes) == writes + 2  # both in the flush's one write
        # Behind queued market data it is queued as a reply, so it still goes first.
        outbox.offer((Channel.BBO, BTC), b'{"type":"bbo","seq":1}')
        outbox.reply_now(b'{"type":"ack","id":10}')
        assert len(sink.writes) == writes + 2
        # While the socket is behind it waits for the writer.
        await settle()
        assert len(sink.writes) == writes + 3
        sink.gate.clear()
        outbox.reply_now(b'{"type":"ack","id":11}')
        assert len(sink.writes) == writes + 3
        sink.gate.set()
        await wait_until(lambda: len(sink.writes) == writes + 4, what="the drain", pause=0)
    assert sink.messages()[1:] == [
        {"type": "ack", "id": 7},
        {"type": "ack", "id": 8},
        {"type": "ack", "id": 9},
        {"type": "ack", "id": 10},
        {"type": "bbo", "seq": 1},
        {"type": "ack", "id": 11},
    ]
