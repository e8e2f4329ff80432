"""The engine and sessions against a recording sink (the I/O seam), no sockets.

Everything here runs on one loop with no real I/O, so ``settle()`` (a bounded number of
loop turns) reaches the same state every run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager

import orjson
import pytest

from book.registry import BookRegistry
from book.status import InstrumentState
from publish.client import ClientSession, ServerLimits
from publish.fanout import Counters, Fanout
from publish.protocol import Channel
from publish.wire import BATCHED, PLAIN
from tests.publish.support import (
    BTC,
    ETH,
    KRAKEN_BTC,
    Feed,
    bbo,
    clock,
    new_registry,
    split_frames,
    wait_until,
)

BID = ("43000.1", "0.5")
ASK = ("43000.2", "1.25")


class RecordingSink:
    """Records frames; while ``gate`` is clear it is not writable, like a socket whose
    write buffer is full."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.writes: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed_with: tuple[int, str] | None = None

    @property
    def writable(self) -> bool:
        return self.gate.is_set() and self.closed_with is None

    def write_frames(self, frames: bytes) -> None:
        assert self.writable, "written to while not writable"
        self.writes.append(frames)
        self.frames.extend(split_frames(frames))

    async def wait_writable(self) -> bool:
        await self.gate.wait()
        return self.closed_with is None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)
        self.gate.set()

    def messages(self) -> list[object]:
        return [orjson.loads(frame) for frame in self.frames]


class Client:
    """A running session: requests go in through a queue, frames come out in ``sink``."""

    def __init__(self, session: ClientSession, sink: RecordingSink) -> None:
        self.session = session
        self.sink = sink
        self.requests: asyncio.Queue[bytes | None] = asyncio.Queue()

    def send(self, **request: object) -> None:
        self.requests.put_nowait(orjson.dumps(request))

    async def incoming(self) -> AsyncIterator[bytes]:
        while (raw := await self.requests.get()) is not None:
            yield raw


@asynccontextmanager
async def client(
    fanout: Fanout, *, limits: ServerLimits | None = None, batch: bool = False
) -> AsyncIterator[Client]:
    sink = RecordingSink()
    session = ClientSession(
        sink, fanout, limits=limits or ServerLimits(), wire=BATCHED if batch else PLAIN
    )
    running = Client(session, sink)
    task = asyncio.create_task(session.run(running.incoming()))
    try:
        yield running
    finally:
        sink.gate.set()
        running.requests.put_nowait(None)
        await task


async def settle(turns: int = 50) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def setup() -> tuple[BookRegistry, Feed, Fanout]:
    registry = new_registry()
    return registry, Feed(registry), Fanout(registry, clock=clock)


def ack(request_id: int, channel: str = "bbo", *instruments: str, op: str = "subscribe") -> object:
    message: dict[str, object] = {"type": "ack", "id": request_id, "op": op, "channel": channel}
    if instruments:
        message["instruments"] = list(instruments)
    return message


def quotes(feed: Feed, instrument: str, first_bid: int, count: int) -> Iterator[object]:
    """Publish ``count`` changes of the bid price, yielding each expected bbo message."""
    for bid in range(first_bid, first_bid + count):
        snapshot = feed.quote(instrument, (str(bid), "1"), ASK)
        yield bbo(instrument, snapshot.seq, (str(bid), "1"), ASK)


async def test_no_subscriber_means_no_work() -> None:
    _, feed, fanout = setup()
    feed.status(BTC, InstrumentState.LIVE)
    feed.quote(BTC, BID, ASK)
    await settle()
    assert fanout.counters == Counters()


async def test_one_tick_per_loop_iteration_one_encode_for_every_subscriber() -> None:
    _, feed, fanout = setup()
    async with client(fanout) as first, client(fanout) as second:
        first.send(op="subscribe", id=1, channel="bbo", instruments=[BTC, ETH])
        second.send(op="subscribe", id=2, channel="bbo", instruments=[BTC])
        await wait_until(lambda: len(second.sink.frames) == 1, what="acks", pause=0)
        # Three changes of BTC and one of ETH applied in one loop iteration.
        feed.quote(BTC, ("1", "1"), ASK)
        feed.quote(BTC, ("2", "1"), ASK)
        feed.quote(ETH, ("3", "1"), ASK)
        feed.quote(BTC, BID, ASK)
        await settle()
    assert first.sink.messages() == [
        ack(1, "bbo", BTC, ETH),
        bbo(BTC, 3, BID, ASK),
        bbo(ETH, 1, ("3", "1"), ASK),
    ]
    assert second.sink.messages() == [ack(2, "bbo", BTC), bbo(BTC, 3, BID, ASK)]
    assert (fanout.counters.ticks, fanout.counters.messages_encoded) == (1, 2)


async def test_blocked_client_gets_latest_state_and_never_delays_the_other() -> None:
    _, feed, fanout = setup()
    async with client(fanout) as slow, client(fanout) as fast:
        for c in (slow, fast):
            c.send(op="subscribe", id=1, channel="bbo", instruments=[BTC])
        await wait_until(lambda: len(slow.sink.frames) == 1, what="ack", pause=0)
        slow.sink.gate.clear()
        expected = []
        for message in quotes(feed, BTC, 100, 5):
            expected.append(message)
            await settle()
            # The fast client has every tick while the slow one's socket takes nothing.
            assert fast.sink.messages()[1:] == expected
        assert slow.sink.messages() == [ack(1, "bbo", BTC)]
        slow.sink.gate.set()
        await settle()
    assert slow.sink.messages() == [ack(1, "bbo", BTC), expected[-1]]
    assert fanout.counters.conflated == 4


async def test_offer_all_conflates_like_single_offers_in_one_update() -> None:
    _, _, fanout = setup()
    first, second, third = ((Channel.PROFIT, f"p-{n}") for n in range(3))
    async with client(fanout) as behind:
        behind.sink.gate.clear()  # the socket takes nothing: everything stays queued
        behind.session.outbox.offer(first, b'{"n":1}')
        behind.session.outbox.offer_all({second: b'{"n":2}', first: b'{"n":3}', third: b'{"n":4}'})
        behind.session.outbox.offer_all({})
        await settle()
        assert behind.sink.frames == []
        assert fanout.counters.conflated == 1
        behind.sink.gate.set()
        await settle()
    # A replaced message keeps its place (as with ``offer``) and holds the newest value.
    assert behind.sink.messages() == [{"n": 3}, {"n": 2}, {"n": 4}]


async def test_subscribe_sends_live_state_once_even_when_a_change_is_pending() -> None:
    _, feed, fanout = setup()
    feed.status(BTC, InstrumentState.LIVE)
    feed.status(ETH, InstrumentState.LIVE)
    feed.quote(BTC, BID, ASK)
    feed.quote(ETH, BID, ASK)
    feed.quote(KRAKEN_BTC, BID, ASK)  # not live: no state sent
    async with client(fanout) as watcher, client(fanout) as late:
        watcher.send(op="subscribe", id=1, channel="bbo", instruments=[ETH])
        await settle()
        # ETH changes (dirty, tick pending) and the late client subscribes in the same
        # iteration: the tick delivers ETH to it, the subscribe must not send it too.
        feed.quote(ETH, ("7", "1"), None)
        late.session.handle(
            b'{"op":"subscribe","id":2,"channel":"bbo","instruments":["%s","%s","%s"]}'
            % (BTC.encode(), ETH.encode(), KRAKEN_BTC.encode())
        )
        await settle()
    assert late.sink.messages() == [
        ack(2, "bbo", BTC, ETH, KRAKEN_BTC),
        bbo(BTC, 1, BID, ASK),
        bbo(ETH, 2, ("7", "1"), None),
    ]
    assert watcher.sink.messages() == [
        ack(1, "bbo", ETH),
        bbo(ETH, 1, BID, ASK),
        bbo(ETH, 2, ("7", "1"), None),
    ]
    assert (fanout.counters.conflated, fanout.counters.messages_encoded) == (0, 3)


async def test_unsubscribe_drops_pending_updates_and_later_ones() -> None:
    _, feed, fanout = setup()
    async with client(fanout) as c:
        c.send(op="subscribe", id=1, channel="bbo", instruments=[BTC, ETH])
        await wait_until(lambda: len(c.sink.frames) == 1, what="ack", pause=0)
        first = next(quotes(feed, BTC, 1, 1))
        await settle()
        c.sink.gate.clear()
        next(quotes(feed, BTC, 2, 1))  # pending: the socket takes nothing
        c.send(op="unsubscribe", id=2, channel="bbo", instruments=[BTC])
        await settle()
        c.sink.gate.set()
        await settle()
        next(quotes(feed, BTC, 3, 1))
        eth = next(quotes(feed, ETH, 4, 1))
        await settle()
        assert c.session.topics == frozenset({(Channel.BBO, ETH)})
    assert c.sink.messages() == [
        ack(1, "bbo", BTC, ETH),
        first,
        ack(2, "bbo", BTC, op="unsubscribe"),
        eth,
    ]
    assert fanout.subscriber_count((Channel.BBO, BTC)) == 0


async def test_status_channel_current_state_then_changes() -> None:
    _, feed, fanout = setup()
    feed.status(BTC, InstrumentState.LIVE)
    async with client(fanout) as c:
        c.send(op="subscribe", id=1, channel="status")
        await settle()
        feed.status(ETH, InstrumentState.LIVE)
        feed.status(BTC, InstrumentState.STALE, "checksum mismatch")
        await settle()
    assert c.sink.messages() == [
        ack(1, "status"),
        {"type": "status", "instrument": BTC, "state": "live", "reason": "synced"},
        {"type": "status", "instrument": ETH, "state": "syncing", "reason": "starting"},
        {"type": "status", "instrument": KRAKEN_BTC, "state": "syncing", "reason": "starting"},
        {"type": "status", "instrument": ETH, "state": "live", "reason": "synced"},
        {"type": "status", "instrument": BTC, "state": "stale", "reason": "checksum mismatch"},
    ]


async def test_batch_frames_hold_everything_pending_as_one_array() -> None:
    _, feed, fanout = setup()
    feed.status(BTC, InstrumentState.LIVE)
    feed.quote(BTC, BID, ASK)
    async with client(fanout, batch=True) as c:
        c.send(op="subscribe", id=1, channel="bbo", instruments=[BTC, ETH])
        await settle()
        feed.quote(BTC, ("1", "2"), ASK)
        feed.quote(ETH, ("3", "4"), None)
        await settle()
    assert c.sink.messages() == [
        [ack(1, "bbo", BTC, ETH), bbo(BTC, 1, BID, ASK)],
        [bbo(BTC, 2, ("1", "2"), ASK), bbo(ETH, 1, ("3", "4"), None)],
    ]
    assert (fanout.counters.frames_sent, fanout.counters.messages_sent) == (2, 4)


async def test_subscription_limit_is_all_or_nothing() -> None:
    _, _, fanout = setup()
    async with client(fanout, limits=ServerLimits(max_subscriptions=2)) as c:
        c.send(op="subscribe", id=1, channel="bbo", instruments=[BTC])
        c.send(op="subscribe", id=2, channel="bbo", instruments=[BTC, ETH, KRAKEN_BTC])
        c.send(op="subscribe", id=3, channel="bbo", instruments=[BTC, ETH])
        await settle()
        assert c.session.topics == frozenset({(Channel.BBO, BTC), (Channel.BBO, ETH)})
    assert c.sink.messages() == [
        ack(1, "bbo", BTC),
        {
            "type": "error",
            "id": 2,
            "code": "too_many_subscriptions",
            "message": "at most 2 subscriptions per connection (1 held, 2 requested)",
        },
        ack(3, "bbo", BTC, ETH),
    ]


async def test_session_stops_reading_while_replies_pile_up() -> None:
    _, _, fanout = setup()
    async with client(fanout, limits=ServerLimits(max_pending_replies=2)) as c:
        c.sink.gate.clear()
        for request_id in range(5):
            c.send(op="ping", id=request_id)
        await settle()
        # Pongs 0-1 wait for the socket: request 2 is read and waits, 3-4 stay unread.
        assert c.requests.qsize() == 2
        c.sink.gate.set()
        await settle()
        assert c.requests.qsize() == 0
    assert c.sink.messages() == [{"type": "pong", "id": n} for n in range(5)]


async def test_take_serves_at_once_until_replies_pile_up_then_leaves_it_to_the_read_loop() -> None:
    _, _, fanout = setup()
    assert not ClientSession(RecordingSink(), fanout).take('{"op":"ping","id":0}')  # not running
    async with client(fanout, limits=ServerLimits(max_pending_replies=2)) as c:
        await settle()
        c.sink.gate.clear()
        assert c.session.take('{"op":"ping","id":0}')
        assert c.session.take('{"op":"ping","id":1}')
        # Pongs 0-1 wait for the socket: request 2 waits its turn in the read loop's queue.
        assert not c.session.take('{"op":"ping","id":2}')
        c.send(op="ping", id=2)
        await settle()
        assert c.sink.messages() == []
        c.sink.gate.set()
        await settle()
        assert c.session.take('{"op":"ping","id":3}')
    assert c.sink.messages() == [{"type": "pong", "id": n} for n in range(4)]


async def test_take_waits_while_the_read_loop_holds_a_request_for_its_turn() -> None:
    _, _, fanout = setup()
    async with client(fanout, limits=ServerLimits(max_pending_replies=2)) as c:
        await settle()
        c.sink.gate.clear()
        assert c.session.take('{"op":"ping","id":0}')
        assert c.session.take('{"op":"ping","id":1}')
        c.send(op="ping", id=2)
        await settle()  # the read loop has request 2 and waits for the pongs to drain
        c.sink.gate.set()
        await asyncio.sleep(0)  # the writer drains them; the read loop is woken, not run yet
        assert c.session.outbox.replies_pending == 0
        # Request 3 must not overtake request 2.
        assert not c.session.take('{"op":"ping","id":3}')
        c.send(op="ping", id=3)
        await settle()
    assert c.sink.messages() == [{"type": "pong", "id": n} for n in range(4)]


async def test_slow_close_is_counted_once_and_leaves_every_topic() -> None:
    _, _, fanout = setup()
    async with client(fanout) as c:
        c.send(op="subscribe", id=1, channel="bbo", instruments=[BTC])
        c.send(op="subscribe", id=2, channel="status")
        await settle()
        c.session.close_slow()
        c.session.close_slow()
        await settle()
        assert c.sink.closed_with == (4008, "slow consumer")
    assert fanout.counters.slow_closes == 1
    assert (fanout.counters.clients, fanout.counters.connections_total) == (0, 1)
    assert [fanout.subscriber_count(topic) for topic in c.session.topics] == []
    assert fanout.subscriber_count((Channel.BBO, BTC)) == 0
    assert fanout.subscriber_count((Channel.STATUS, "")) == 0


class BrokenSink(RecordingSink):
    """A sink whose writes raise, like a transport that died under the session."""

    def write_frames(self, frames: bytes) -> None:
        raise RuntimeError("transport gone")


async def test_a_subscriber_that_fails_to_write_never_stops_the_others_or_later_ticks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, feed, fanout = setup()
    broken = ClientSession(BrokenSink(), fanout)
    fanout.subscribe(broken.outbox, [(Channel.BBO, BTC, 0)])
    async with client(fanout) as good:
        good.send(op="subscribe", id=1, channel="bbo", instruments=[BTC])
        await settle()
        first = next(quotes(feed, BTC, 1, 1))
        await settle()
        second = next(quotes(feed, BTC, 2, 1))
        await settle()
    assert good.sink.messages() == [ack(1, "bbo", BTC), first, second]
    assert fanout.counters.flush_errors == 2
    assert [record.getMessage() for record in caplog.records] == [
        "writing to a subscriber failed; counting further failures"
    ]


async def test_sessions_with_the_same_subscriptions_share_one_write_per_tick() -> None:
    _, feed, fanout = setup()
    async with (
        client(fanout) as first,
        client(fanout) as second,
        client(fanout) as stalled,
        client(fanout, batch=True) as batched,
        client(fanout) as other,
    ):
        for c in (first, second, stalled, batched):
            c.send(op="subscribe", id=1, channel="bbo", instruments=[BTC, ETH])
        other.send(op="subscribe", id=1, channel="bbo", instruments=[BTC])
        await settle()
        assert (fanout.crowds(), fanout.subscriptions()) == (2, 9)
        stalled.sink.gate.clear()
        ticks = []
        for bid in (1, 2):
            ticks.append([*quotes(feed, BTC, bid, 1), *quotes(feed, ETH, bid + 10, 1)])
            await settle()
        # Framed once for the crowd: the very same bytes object went to both.
        assert first.sink.writes[1:] == second.sink.writes[1:]
        assert all(
            a is b for a, b in zip(first.sink.writes[1:], second.sink.writes[1:], strict=True)
        )
        assert len(first.sink.writes) == 3  # the ack, then one write per tick
        stalled.sink.gate.set()
        await settle()
    everything = [ack(1, "bbo", BTC, ETH), *ticks[0], *ticks[1]]
    assert first.sink.messages() == second.sink.messages() == everything
    assert batched.sink.messages() == [[ack(1, "bbo", BTC, ETH)], ticks[0], ticks[1]]
    assert stalled.sink.messages() == [ack(1, "bbo", BTC, ETH), *ticks[1]]  # conflated
    assert other.sink.messages() == [ack(1, "bbo", BTC), ticks[0][0], ticks[1][0]]
    assert (fanout.crowds(), fanout.subscriptions()) == (0, 0)


class OnlyBtc:
    """A catalog that carries BTC alone, whatever the registry holds."""

    def carries(self, instrument: str) -> bool:
        return instrument == BTC

    def unknown_instruments(self, instruments: Iterable[str]) -> list[str]:
        return [instrument for instrument in instruments if not self.carries(instrument)]

    def unknown_symbols(self, symbols: Iterable[str]) -> list[str]:
        return list(symbols)


async def test_requests_are_checked_against_the_injected_catalog() -> None:
    _, _, fanout = setup()
    sink = RecordingSink()
    session = ClientSession(sink, fanout, catalog=OnlyBtc())
    running = Client(session, sink)
    task = asyncio.create_task(session.run(running.incoming()))
    running.send(op="subscribe", id=1, channel="bbo", instruments=[ETH])
    running.send(op="subscribe", id=2, channel="nbbo", symbols=["BTC-USDT"])
    running.send(op="subscribe", id=3, channel="bbo", instruments=[BTC])
    await settle()
    running.requests.put_nowait(None)
    await task
    assert sink.messages() == [
        {
            "type": "error",
            "id": 1,
            "code": "unknown_instrument",
            "message": f"unknown instrument(s): {ETH}",
        },
        {
            "type": "error",
            "id": 2,
            "code": "unknown_symbol",
            "message": "unknown symbol(s): BTC-USDT",
        },
        ack(3, "bbo", BTC),
    ]
