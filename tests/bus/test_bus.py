"""Ingest publisher and edge over a real nats-server: what the edge's registry holds is
what the ingest's holds, through joins, losses, reordering, outages and failover."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.msg import Msg

from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from bus.codec import (
    BookMessage,
    StateReply,
    StatusMessage,
    decode,
    decode_book,
    encode_book,
)
from bus.edge import BusEdge
from bus.ingest import FLUSH_BURST, FLUSH_INTERVAL, BusPublisher
from bus.link import BusLink
from bus.natsserver import NatsServer
from bus.subjects import Subjects
from tests.waiting import eventually

PREFIX = "test"
BTC = "sim:BTC-USDT"
ETH = "sim:ETH-USDT"
STALE_AFTER = 1.0


def book(instrument: str, seq: int, bid: int) -> BookSnapshot:
    return BookSnapshot(
        instrument, seq, 1, 2, 3, bid, 7, bid + 1, 8, ((bid, 7), (bid - 1, 9)), ((bid + 1, 8),)
    )


def live(instrument: str) -> InstrumentStatus:
    return InstrumentStatus(instrument, InstrumentState.LIVE, "in sync", 1)


@dataclass
class Node:
    registry: BookRegistry
    link: BusLink
    task: asyncio.Task[None]


@dataclass
class IngestNode(Node):
    publisher: BusPublisher


@dataclass
class EdgeNode(Node):
    edge: BusEdge
    seqs: dict[str, list[int]]


@contextlib.asynccontextmanager
async def ingest(
    url: str, source: int | None = None, flush_interval: float = FLUSH_INTERVAL
) -> AsyncIterator[IngestNode]:
    registry = BookRegistry()
    link = BusLink([url], name="ingest")
    publisher = BusPublisher(
        registry, link, Subjects(PREFIX), source=source, flush_interval=flush_interval
    )
    task = asyncio.create_task(_run(link, publisher.run))
    try:
        await link.wait_connected()
        yield IngestNode(registry, link, task, publisher)
    finally:
        await _stop(task)


@contextlib.asynccontextmanager
async def edge(url: str, stale_after: float = STALE_AFTER) -> AsyncIterator[EdgeNode]:
    registry = BookRegistry()
    seqs: dict[str, list[int]] = {}
    registry.on_snapshot(lambda snap, _: seqs.setdefault(snap.instrument, []).append(snap.seq))
    link = BusLink([url], name="edge")
    bus_edge = BusEdge(registry, link, Subjects(PREFIX), stale_after=stale_after)
    task = asyncio.create_task(_run(link, bus_edge.run))
    try:
        yield EdgeNode(registry, link, task, bus_edge, seqs)
    finally:
        await _stop(task)


async def _run(link: BusLink, role: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async with asyncio.TaskGroup() as group:
        group.create_task(link.run())
        group.create_task(role())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def same_market(edge: EdgeNode, ingest: IngestNode, *instruments: str) -> bool:
    for name in instruments:
        ours, theirs = edge.registry.status(name), ingest.registry.status(name)
        if ours is None or theirs is None or ours.state is not theirs.state:
            return False
        if edge.registry.get(name) != ingest.registry.get(name):
            return False
    return True


def settled(edge: EdgeNode) -> bool:
    """No instrument waits for a repair and no state request is in flight: nothing but
    the stream will change the edge's books (a reply may overtake stream messages sent
    before it, which are then dropped as ``late``: right, but not the stream's fault)."""
    if any(track.repair_needed for track in edge.edge.follower.tracks.values()):
        return False
    return not any(task.get_name() == "bus:state-request" for task in asyncio.all_tasks())


def never_back(seqs: list[int]) -> bool:
    return all(a < b for a, b in zip(seqs, seqs[1:], strict=False))


async def test_an_edge_serves_what_the_ingest_publishes(nats_server: NatsServer) -> None:
    # A stall of the loaded test process must not pass for a silent source (a failover
    # or stale mark would repair, and a repair's reply may overtake the stream).
    async with ingest(nats_server.url) as source, edge(nats_server.url, stale_after=60) as sink:
        publisher = source.publisher
        for name in (BTC, ETH):
            publisher.add_instrument(name, 0)
            publisher.set_status(live(name))
        await eventually(lambda: sink.registry.instruments() == [BTC, ETH], "instruments known")
        # The edge joined: it asked for the state of both and got it.
        await eventually(lambda: settled(sink), "the edge's join repaired", limit=30)
        counters = sink.edge.follower.counters
        joined = (counters.gaps, counters.late, counters.bad_messages, counters.requests)
        for seq in range(1, 200):
            publisher.publish(book(BTC, seq, 100 + seq))
            publisher.publish(book(ETH, seq, 50 + seq))
            if seq % 10 == 0:
                await asyncio.sleep(0)
        await eventually(
            lambda: same_market(sink, source, BTC, ETH), "edge equals ingest", limit=30
        )
        assert never_back(sink.seqs[BTC]) and never_back(sink.seqs[ETH])
        # The stream alone carried every book: nothing lost, late or bad, nothing repaired.
        assert (counters.gaps, counters.late, counters.bad_messages, counters.requests) == joined
        assert (counters.gaps, counters.bad_messages) == (0, 0)


async def test_the_publisher_is_idle_once_every_value_is_with_nats(
    nats_server: NatsServer,
) -> None:
    async with ingest(nats_server.url) as source, edge(nats_server.url) as sink:
        publisher = source.publisher
        await eventually(lambda: publisher.idle, "idle before anything is offered")
        publisher.add_instrument(BTC, 0)
        publisher.set_status(live(BTC))
        publisher.publish(book(BTC, 1, 100))
        assert not publisher.idle  # pending until its task's next tick
        await eventually(lambda: publisher.idle, "the tick handed both to nats-py")
        assert publisher.counters.published == 2
        await eventually(lambda: same_market(sink, source, BTC), "the edge got them")


async def test_a_state_reply_carries_the_newest_book_even_before_its_flush() -> None:
    # No NATS and no task: what the feeds handed over stays pending, and an edge asking
    # for state meanwhile still gets it (the bus_seq of the last message sent: none yet).
    link = BusLink(["nats://127.0.0.1:1"], name="ingest")
    publisher = BusPublisher(BookRegistry(), link, Subjects(PREFIX), source=5)
    publisher.add_instrument(BTC, 0)
    publisher.publish(book(BTC, 1, 100))
    publisher.publish(book(BTC, 2, 102))
    publisher.set_status(live(BTC))
    assert not publisher.idle
    reply = decode(publisher.state_reply((BTC,)))
    assert reply == StateReply(
        5, (BookMessage(5, 0, book(BTC, 2, 102)), StatusMessage(5, 0, live(BTC)))
    )


async def test_a_lone_snapshot_after_a_quiet_spell_goes_out_on_the_next_loop_iteration(
    nats_server: NatsServer,
) -> None:
    async with ingest(nats_server.url) as source:
        publisher = source.publisher
        publisher.add_instrument(BTC, 0)
        publisher.set_status(live(BTC))
        publisher.publish(book(BTC, 1, 101))
        await eventually(lambda: publisher.idle, "the first tick handed both to nats-py")
        await asyncio.sleep(10 * publisher.flush_interval)  # quiet: the last flush is old
        published = publisher.counters.published
        publisher.publish(book(BTC, 2, 102))
        assert not publisher.idle
        await asyncio.sleep(0)  # one loop iteration: the publisher's task runs before us
        assert publisher.idle
        assert publisher.counters.published == published + 1


async def test_a_burst_costs_the_flush_budget_s_burst_and_one_message_more(
    nats_server: NatsServer,
) -> None:
    # One snapshot per loop turn, as a live websocket feed hands them over: the first
    # FLUSH_BURST go out at once (the feed was quiet), the rest conflate into one message
    # sent when the budget has earned a flush again. The interval is long so that no
    # stall of a loaded machine spreads the burst over two of them.
    burst, interval = 50, 1.0
    async with (
        ingest(nats_server.url, flush_interval=interval) as source,
        edge(nats_server.url, stale_after=60) as sink,
    ):
        publisher = source.publisher
        publisher.add_instrument(BTC, 0)
        publisher.set_status(live(BTC))
        await eventually(lambda: same_market(sink, source, BTC), "the edge has BTC's state")
        await eventually(lambda: settled(sink), "the edge's join repaired", limit=30)
        on_the_bus: list[BookMessage] = []

        async def keep(msg: Msg) -> None:
            on_the_bus.append(decode_book(msg.data))

        raw = await nats.connect(nats_server.url)
        try:
            await raw.subscribe(Subjects(PREFIX).book(BTC), cb=keep)
            await raw.flush()
            await asyncio.sleep(interval * 1.1)  # quiet: the budget is full again
            for seq in range(1, burst + 1):
                publisher.publish(book(BTC, seq, 100 + seq))
                await asyncio.sleep(0)
            last = book(BTC, burst, 100 + burst)
            await eventually(lambda: sink.registry.get(BTC) == last, "the edge ends with the last")
            await eventually(
                lambda: bool(on_the_bus) and on_the_bus[-1].snapshot == last, "the last on the bus"
            )
        finally:
            await raw.close()
        at_once = list(range(1, FLUSH_BURST + 1))
        assert [message.snapshot.seq for message in on_the_bus] == [*at_once, burst]
        assert sink.seqs[BTC] == [*at_once, burst]
        assert publisher.counters.published == 1 + FLUSH_BURST + 1
        assert sink.edge.follower.counters.gaps == 0


async def test_a_late_edge_gets_every_instrument(nats_server: NatsServer) -> None:
    async with ingest(nats_server.url) as source:
        publisher = source.publisher
        for name in (BTC, ETH):
            publisher.add_instrument(name, 0)
            publisher.publish(book(name, 7, 70))
            publisher.set_status(live(name))
        await asyncio.sleep(0.05)  # published before any edge exists
        async with edge(nats_server.url) as late:
            await eventually(lambda: same_market(late, source, BTC, ETH), "late edge caught up")


async def test_lost_and_reordered_messages_are_repaired(nats_server: NatsServer) -> None:
    async with ingest(nats_server.url) as source, edge(nats_server.url) as sink:
        publisher = source.publisher
        publisher.add_instrument(BTC, 0)
        publisher.set_status(live(BTC))
        publisher.publish(book(BTC, 1, 100))
        await eventually(lambda: same_market(sink, source, BTC), "first book")
        raw = await nats.connect(nats_server.url)
        try:
            subjects = Subjects(PREFIX)
            # As if the ingest's messages 3 and 4 were lost and 6 came before 5: sent in
            # the ingest's name, while its real state moves on (what the repair fetches).
            sent = publisher._bus_seq[BTC]
            publisher.local.publish(book(BTC, 9, 109))
            publisher._books[BTC] = book(BTC, 9, 109)
            publisher._bus_seq[BTC] = sent + 4
            for bus_seq, seq in ((sent + 4, 6), (sent + 3, 5)):
                payload = encode_book(
                    book(BTC, seq, 100 + seq), source=publisher.source, bus_seq=bus_seq
                )
                await raw.publish(subjects.book(BTC), payload)
            await raw.flush()
        finally:
            await raw.close()
        counters = sink.edge.follower.counters
        await eventually(lambda: counters.reordered == 1, "the reordered message counted")
        await eventually(lambda: same_market(sink, source, BTC), "repaired to the ingest's book")
        assert counters.gaps == 3 and counters.repairs >= 2
        assert sink.seqs[BTC] == [1, 6, 9]


async def test_a_bus_outage_makes_books_stale_and_they_heal(nats_server: NatsServer) -> None:
    async with ingest(nats_server.url) as source, edge(nats_server.url) as sink:
        publisher = source.publisher
        publisher.add_instrument(BTC, 0)
        publisher.set_status(live(BTC))
        publisher.publish(book(BTC, 1, 100))
        await eventually(lambda: sink.registry.is_live(BTC), "live through the bus")
        nats_server.kill()
        await eventually(
            lambda: not sink.registry.is_live(BTC), "stale while the bus is down", limit=10
        )
        status = sink.registry.status(BTC)
        assert status is not None and status.reason.startswith("bus: no data from its ingest")
        publisher.publish(book(BTC, 2, 102))  # while the bus is down: kept, sent later
        nats_server.start()
        await eventually(lambda: same_market(sink, source, BTC), "live again", limit=20)
        assert sink.registry.is_live(BTC)
        assert sink.seqs[BTC] == [1, 2]


async def test_failover_between_two_ingests_never_moves_seq_back(nats_server: NatsServer) -> None:
    async with contextlib.AsyncExitStack() as stack:
        sink = await stack.enter_async_context(edge(nats_server.url))
        primary_stack = await stack.enter_async_context(contextlib.AsyncExitStack())
        primary = await primary_stack.enter_async_context(ingest(nats_server.url))
        primary.publisher.add_instrument(BTC, 0)
        primary.publisher.set_status(live(BTC))
        await eventually(
            lambda: (
                BTC in (tracks := sink.edge.follower.tracks)
                and tracks[BTC].source == primary.publisher.source
            ),
            "the edge follows the first ingest",
        )
        standby = await stack.enter_async_context(ingest(nats_server.url))
        standby.publisher.add_instrument(BTC, 0)
        standby.publisher.set_status(live(BTC))
        for seq in range(1, 6):
            # The primary started first: its seqs are ahead of the standby's.
            primary.publisher.publish(book(BTC, 1000 + seq, 100 + seq))
            standby.publisher.publish(book(BTC, seq, 100 + seq))
            await asyncio.sleep(0.01)
        await eventually(lambda: same_market(sink, primary, BTC), "live from the primary")
        await primary_stack.aclose()  # the primary stops (says bye)
        standby.publisher.publish(book(BTC, 6, 106))
        await eventually(
            lambda: (snap := sink.registry.get(BTC)) is not None and snap.bid == 106,
            "following the standby",
        )
        assert sink.edge.follower.counters.failovers == 1
        assert never_back(sink.seqs[BTC])
        assert sink.seqs[BTC][:5] == [1001, 1002, 1003, 1004, 1005]
        assert sink.registry.is_live(BTC)
