"""The latency hooks, fed by the real parts that call them: the registry, the fan-out
and its server (a websocket client on loopback), the storage flusher over SQLite."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from websockets.asyncio.client import connect

from book.fixed import parse_fixed
from book.l2 import L2Book
from book.snapshot import BookSnapshot
from book.status import InstrumentState
from publish.fanout import Fanout
from publish.metrics import LatencyRecorder, Stage, Summary
from publish.metrics.hdr import EMPTY
from publish.server import MarketServer
from publish.storage import SqliteBackend, StorageFlusher
from tests.publish.storage.support import bbo as bbo_row
from tests.publish.support import BTC, ETH, TS_SEND, Feed, clock, new_registry, receive, send
from tests.waiting import eventually


def exactly(value: int, count: int = 1) -> Summary:
    """The summary of ``count`` samples of ``value`` (below 2048: counted exactly)."""
    return Summary(count, value * count, value, value, value, value, value)


def snapshot(book: L2Book, bid: str, *, ts_event: int, ts_recv: int, ts_book: int) -> BookSnapshot:
    book.load([(parse_fixed(bid), parse_fixed("1"))], [(parse_fixed("99999"), parse_fixed("1"))])
    return book.snapshot(ts_event, ts_recv, ts_book)


async def test_snapshots_record_feed_latency_per_venue_and_ingest() -> None:
    registry = new_registry()
    recorder = LatencyRecorder()
    registry.on_snapshot(recorder.on_snapshot)
    btc, eth, kraken = L2Book(BTC), L2Book(ETH), L2Book("kraken:BTC-USD")
    registry.publish(snapshot(btc, "1", ts_event=1_000, ts_recv=1_300, ts_book=1_350))
    registry.publish(snapshot(eth, "1", ts_event=2_000, ts_recv=2_500, ts_book=2_510))
    registry.publish(snapshot(kraken, "1", ts_event=0, ts_recv=9_000, ts_book=9_020))  # no time
    registry.publish(snapshot(btc, "2", ts_event=5_000, ts_recv=4_990, ts_book=5_000))  # skewed
    assert {venue: h.roll() for venue, h in recorder.feed_latency.items()} == {
        "binance": Summary(3, 800, 300, 500, 500, 500, 500),
        "kraken": EMPTY,
    }
    assert recorder.stages[Stage.INGEST].roll() == Summary(4, 90, 10, 50, 50, 50, 50)
    assert {name: tally.updates for name, tally in recorder.instruments.items()} == {
        BTC: 2,
        ETH: 1,
        "kraken:BTC-USD": 1,
    }


async def test_frames_written_by_a_tick_record_publish_and_end_to_end() -> None:
    """Fan-out clock reads ``TS_SEND``: publish = TS_SEND - ts_book, end to end =
    TS_SEND - ts_recv. Only frames a tick wrote count, once per snapshot however many
    subscribers: not the current state sent on subscribe, not unsubscribed books."""
    registry = new_registry()
    recorder = LatencyRecorder()
    fanout = Fanout(registry, clock=clock, on_written=recorder.on_written)
    feed = Feed(registry)
    feed.status(BTC, InstrumentState.LIVE)
    btc, eth = L2Book(BTC), L2Book(ETH)
    times = {"ts_event": TS_SEND - 5_000, "ts_recv": TS_SEND - 1_500, "ts_book": TS_SEND - 1_000}
    registry.publish(snapshot(btc, "1", **times))
    async with (
        MarketServer(registry, fanout) as server,
        connect(server.url) as first,
        connect(server.url) as second,
    ):
        for ws in (first, second):
            await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC])
            assert (await receive(ws))["type"] == "ack"
            assert (await receive(ws))["seq"] == 1  # the current state
        registry.publish(snapshot(eth, "1", **times))  # nobody subscribed
        registry.publish(snapshot(btc, "2", **times))
        assert [(await receive(ws))["seq"] for ws in (first, second)] == [2, 2]
    assert recorder.stages[Stage.PUBLISH].roll() == exactly(1_000)
    assert recorder.stages[Stage.END_TO_END].roll() == exactly(1_500)


async def test_storage_batches_record_flush_time_and_rows(tmp_path: Path) -> None:
    recorder = LatencyRecorder()
    ticks = iter(range(0, 10**9, 700))  # each clock read is 700 ns after the last
    backend = SqliteBackend(str(tmp_path / "m.db"))
    await backend.open()
    flusher = StorageFlusher(
        backend, window_ms=1.0, clock=lambda: next(ticks), on_flush=recorder.on_flush
    )
    try:
        for seq in range(1, 6):
            flusher.add_bbo(bbo_row(seq))
        await flusher.drain()
        for seq in range(6, 9):
            flusher.add_bbo(bbo_row(seq))
        await flusher.drain()
    finally:
        await backend.close()
    assert recorder.stages[Stage.DB_FLUSH].roll() == exactly(700, count=2)
    assert recorder.stages[Stage.DB_BATCH_ROWS].roll() == Summary(2, 8, 3, 5, 5, 5, 5)


async def test_event_loop_lag_is_sampled_until_cancelled() -> None:
    recorder = LatencyRecorder()
    lag = recorder.stages[Stage.EVENT_LOOP_LAG]
    sampler = asyncio.create_task(recorder.sample_loop_lag(period=0.001))
    await eventually(lambda: sum(lag._counts) >= 5, "five loop-lag samples")
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    summary = lag.roll()
    assert summary.count >= 5 and summary.p50 is not None and summary.p50 >= 0
