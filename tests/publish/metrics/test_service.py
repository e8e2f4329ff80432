"""Once-a-second reports: rates, instrument activity, /stats, the ``metrics`` channel.
Clocks are injected (``support.new_setup``), so every rate and class is an exact value."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from publish.fanout import Counters
from publish.metrics import LatencyRecorder, Metrics
from publish.metrics.cpu import CpuTimes
from publish.metrics.hdr import EMPTY, SECOND_NS, Histogram, Summary
from publish.server import MarketServer
from tests.publish.metrics.support import START, Setup, new_setup, quote
from tests.publish.support import BTC, ETH, KRAKEN_BTC, TS_SEND, new_registry, receive, send
from tests.waiting import eventually


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return new_setup(tmp_path)


def row(state: str, reason: str, seq: int | None, updates: int, rate: float, period_rate: float,
        activity: str) -> dict[str, Any]:  # fmt: skip
    return {
        "state": state,
        "reason": reason,
        "seq": seq,
        "updates": updates,
        "update_rate": rate,
        "period_rate": period_rate,
        "activity": activity,
    }


async def test_a_tick_reports_every_stage_rates_venues_and_instruments(setup: Setup) -> None:
    quote(setup.feed, BTC, 20)
    quote(setup.feed, ETH, 2)
    setup.fanout.counters.frames_sent += 30  # as the sessions count their writes
    report = setup.at(2.0)
    # support.Feed stamps ts_recv = ts_event + 7 and ts_book = seq < ts_recv (ingest 0).
    assert report == {
        "ts": START + 2 * SECOND_NS,  # wall-clock reads: start, initial report, this tick
        "interval_ns": 2 * SECOND_NS,
        "stages": {
            "ingest": {"count": 22, "sum": 0, "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0},
            "publish": EMPTY.as_json(),
            "end_to_end": EMPTY.as_json(),
            "db_flush": EMPTY.as_json(),
            "db_batch_rows": EMPTY.as_json(),
            "event_loop_lag": EMPTY.as_json(),
            "bus_hop": EMPTY.as_json(),
            "position_op": EMPTY.as_json(),
        },
        "feed_latency": {
            "binance": {"count": 22, "sum": 154, "p50": 7, "p90": 7, "p99": 7, "p999": 7, "max": 7}
        },
        "rates": {
            "feed_frames": 0.0,
            "feed_messages": 0.0,
            "messages_sent": 0.0,
            "frames_sent": 15.0,
            "conflated": 0.0,
            "db_rows": 0.0,
        },
        "clients": 0,
        "db_pending_rows": 0,
        "cpu": {"process": 0.0, "event_loop": 0.0},
        "venues": {
            "binance": {
                "connections": 0,
                "instruments": {"syncing": 0, "live": 2, "stale": 0, "halted": 0},
            },
            "kraken": {
                "connections": 0,
                "instruments": {"syncing": 1, "live": 0, "stale": 0, "halted": 0},
            },
        },
        "instruments": {
            BTC: row("live", "synced", 20, 20, 10.0, 10.0, "hot"),
            ETH: row("live", "synced", 2, 2, 1.0, 1.0, "warm"),
            KRAKEN_BTC: row("syncing", "starting", None, 0, 0.0, 0.0, "cold"),
        },
    }
    assert setup.metrics.report() == report
    assert list(setup.metrics.history) == [
        {key: value for key, value in report.items() if key not in ("venues", "instruments")}
    ]


async def test_a_point_gives_the_intervals_cpu_of_the_process_and_of_the_event_loop(
    setup: Setup,
) -> None:
    setup.at(1.0, CpuTimes(process=10.0, event_loop=8.0))
    # Two seconds in which the process used 1.5 s of CPU, its loop's thread 0.5 s of it.
    point = setup.at(3.0, CpuTimes(process=11.5, event_loop=8.5))
    assert point["cpu"] == {"process": 0.75, "event_loop": 0.25}
    assert setup.metrics.cpu == CpuTimes(11.5, 8.5)  # what /metrics exports as counters
    # Two clocks read one after the other: the loop's share is never above the process's.
    assert setup.at(4.0, CpuTimes(12.0, 9.1))["cpu"] == {"process": 0.5, "event_loop": 0.5}


def test_the_cpu_of_the_thread_that_ticks_is_the_event_loops() -> None:
    """With the real clocks: work done on the ticking thread counts for the loop, work
    done by another thread only for the process."""
    metrics = Metrics(LatencyRecorder(), registry=new_registry(), fanout=Counters())
    spin(0.05)
    first = metrics.tick()["cpu"]
    worker = threading.Thread(target=spin, args=(0.2,))
    worker.start()
    worker.join()
    second = metrics.tick()["cpu"]
    assert 0 < first["event_loop"] <= first["process"]
    assert second["process"] > 2 * second["event_loop"]


def spin(seconds: float) -> None:
    """Use ``seconds`` of this thread's CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_activity_is_reclassified_once_per_period(setup: Setup) -> None:
    quote(setup.feed, BTC, 20)
    quote(setup.feed, ETH, 5)
    setup.at(1.0)
    quote(setup.feed, BTC, 10)
    rows = setup.at(31.0)["instruments"]
    # Rates follow every tick; the class and its rate stay until the period is over.
    assert rows[BTC] == row("live", "synced", 30, 30, 0.333, 20.0, "hot")
    assert rows[ETH] == row("live", "synced", 5, 5, 0.0, 5.0, "warm")
    quote(setup.feed, ETH, 90)
    rows = setup.at(61.0)["instruments"]
    assert rows[BTC] == row("live", "synced", 30, 30, 0.0, 0.167, "cold")
    assert rows[ETH] == row("live", "synced", 95, 95, 3.0, 1.5, "warm")
    assert rows[KRAKEN_BTC] == row("syncing", "starting", None, 0, 0.0, 0.0, "cold")


async def test_stats_holds_windows_totals_and_history_since(setup: Setup) -> None:
    quote(setup.feed, BTC, 3)
    first = setup.at(1.0)
    second = setup.at(2.0)
    quote(setup.feed, BTC, 1)
    third = setup.at(3.0)
    stats = orjson.loads(setup.metrics.stats_json(since=first["ts"]))
    points = [
        {key: value for key, value in p.items() if key not in ("venues", "instruments")}
        for p in (second, third)
    ]
    assert stats["history"] == points
    assert stats["latest"] == points[-1]
    assert orjson.loads(setup.metrics.stats_json())["history"][0]["ts"] == first["ts"]
    assert stats["window"]["feed_latency"] == {
        "binance": {"count": 4, "sum": 28, "p50": 7, "p90": 7, "p99": 7, "p999": 7, "max": 7}
    }
    assert stats["window"]["seconds"] == 60.0
    assert stats["totals"]["feed_latency"] == {"binance": {"count": 4, "sum": 28}}
    assert stats["totals"]["stages"]["ingest"] == {"count": 4, "sum": 0}
    assert stats["instruments"] == third["instruments"]
    assert stats["venues"] == third["venues"]
    assert stats["started"] == START
    assert stats["counters"]["frames_sent"] == 0 and stats["counters"]["clients"] == 0
    assert stats["storage"] == {
        "health": "healthy",
        "healthy": True,
        "batches": 0,
        "rows_written": 0,
        "pending_rows": 0,
        "failures": 0,
        "dropped_bbo_rows": 0,
        "dropped_feed_events": 0,
        "last_flush_ns": 0,
        "max_flush_ns": 0,
    }
    assert set(stats) == {
        "ts",
        "started",
        "interval_s",
        "latest",
        "window",
        "totals",
        "counters",
        "venues",
        "instruments",
        "storage",
        "history",
    }


async def test_the_metrics_channel_gets_each_report_once(setup: Setup) -> None:
    initial: Any = setup.metrics.report()  # before any tick: every stage empty, rates 0
    assert initial["interval_ns"] == 0 and initial["stages"]["ingest"] == EMPTY.as_json()
    async with (
        MarketServer(setup.feed.registry, setup.fanout) as server,
        connect(server.url) as ws,
    ):
        await send(ws, op="subscribe", id=1, channel="metrics")
        assert (await receive(ws))["type"] == "ack"
        assert await receive(ws) == {"type": "metrics", **initial, "ts_send": TS_SEND}
        reports = []
        for second in (1.0, 2.0, 3.0):
            quote(setup.feed, BTC, 2)
            reports.append(setup.at(second))
        received = [await receive(ws) for _ in reports]
    assert received == [{"type": "metrics", **report, "ts_send": TS_SEND} for report in reports]


async def test_a_failing_report_is_logged_once_counted_and_reporting_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> None:
        raise RuntimeError("subscriber went away mid-report")

    metrics = Metrics(
        LatencyRecorder(),
        registry=new_registry(),
        fanout=Counters(),
        interval=0.01,
        on_report=broken,
    )
    task = asyncio.create_task(metrics.run())
    await eventually(lambda: metrics.tick_errors >= 3, "three failed reports")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(metrics.history) >= 3
    assert [record.getMessage() for record in caplog.records] == [
        "metrics report failed; counting further failures"
    ]


async def test_the_tick_rolls_one_histogram_per_loop_iteration() -> None:
    loop = asyncio.get_running_loop()
    iteration = 0
    rolled_at: list[int] = []

    def count_iterations() -> None:
        nonlocal iteration
        iteration += 1
        loop.call_soon(count_iterations)

    class Counted(Histogram):
        __slots__ = ()

        def roll(self) -> Summary:
            rolled_at.append(iteration)
            return super().roll()

    recorder = LatencyRecorder()
    recorder.stages = {stage: Counted() for stage in recorder.stages}
    metrics = Metrics(recorder, registry=new_registry(), fanout=Counters(), interval=0.01)
    loop.call_soon(count_iterations)
    task = asyncio.create_task(metrics.run())
    await eventually(lambda: len(metrics.history) >= 2, "two ticks")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(rolled_at) >= 2 * len(recorder.stages)
    assert len(set(rolled_at)) == len(rolled_at)  # never two rolls in one loop iteration
