"""Metrics of a running demo (simulated venue, real sockets): /metrics parses with
prometheus_client's parser and holds every family, /stats and the ``metrics`` channel
agree, the Grafana dashboard only queries exported metrics, and the /dashboard page shows
live data in headless Chromium (its screenshot is kept in artifacts/)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from app.runtime import RunningServer, serve
from tests.app.chromium import CHROMIUM, browser, open_page
from tests.app.test_end_to_end import INSTRUMENTS, demo_settings
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "docs" / "grafana-dashboard.json"
ARTIFACTS = ROOT / "artifacts"

STAGES = ("ingest", "publish", "end_to_end", "db_flush", "db_batch_rows", "event_loop_lag")
SUMMARIES = {
    "marketcast_feed_latency_seconds",
    "marketcast_ingest_seconds",
    "marketcast_publish_seconds",
    "marketcast_end_to_end_seconds",
    "marketcast_db_flush_seconds",
    "marketcast_db_batch_rows",
    "marketcast_event_loop_lag_seconds",
}
PER_VENUE = ("book_messages", "frames", "gaps", "checksum_failures", "resyncs")
GAUGES_AND_COUNTERS = {
    "marketcast_clients",
    "marketcast_frames_sent",
    "marketcast_messages_sent",
    "marketcast_conflated",
    "marketcast_slow_closes",
    "marketcast_db_pending_rows",
    "marketcast_instrument_updates",
    "marketcast_instrument_update_rate",
    "marketcast_instrument_activity",
    "marketcast_instrument_state",
    "marketcast_event_loop_cpu_seconds",
}
REPORT_KEYS = {
    "type",
    "ts",
    "interval_ns",
    "stages",
    "feed_latency",
    "rates",
    "clients",
    "db_pending_rows",
    "cpu",
    "venues",
    "instruments",
    "ts_send",
}


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[RunningServer]:
    ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(demo_settings(tmp_path / "m.db"), on_ready=ready.set_result))
    server = await asyncio.wait_for(ready, 15)
    try:
        await eventually(lambda: all(server.registry.is_live(i) for i in INSTRUMENTS), "live")
        yield server
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def subscribe(ws: ClientConnection, request_id: int, **request: Any) -> None:
    await ws.send(orjson.dumps({"op": "subscribe", "id": request_id, **request}).decode())


async def test_metrics_stats_channel_and_grafana_agree(demo: RunningServer) -> None:
    async with connect(demo.url) as ws:
        await subscribe(ws, 1, channel="bbo", instruments=INSTRUMENTS)
        await subscribe(ws, 2, channel="metrics")
        reports: list[dict[str, Any]] = []
        while len(reports) < 4:  # the current one on subscribe, then one per tick
            message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] == "metrics":
                reports.append(message)
        async with httpx.AsyncClient(base_url=demo.http_url) as http:
            stats_response = await http.get("/stats")
            metrics_response = await http.get("/metrics")
    assert stats_response.headers["content-type"] == "application/json"
    assert metrics_response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    stats = stats_response.json()

    # The channel carried each tick's point once, in order, none skipped.
    ticks = reports[1:]
    assert all(set(report) == REPORT_KEYS for report in reports)
    history = [point["ts"] for point in stats["history"]]
    first = history.index(ticks[0]["ts"])
    assert history[first : first + len(ticks)] == [tick["ts"] for tick in ticks]
    for tick in ticks:
        point = stats["history"][history.index(tick["ts"])]
        assert {key: tick[key] for key in point} == point
        assert set(tick["instruments"]) == set(INSTRUMENTS)

    assert all(stats["totals"]["stages"][stage]["count"] > 0 for stage in STAGES)
    assert stats["totals"]["feed_latency"]["binance"]["count"] > 0
    assert {name: row["state"] for name, row in stats["instruments"].items()} == dict.fromkeys(
        INSTRUMENTS, "live"
    )
    assert stats["venues"]["binance"]["connections"] == 1
    assert stats["venues"]["binance"]["instruments"] == {
        "syncing": 0,
        "live": 3,
        "stale": 0,
        "halted": 0,
    }

    families = {f.name: f for f in text_string_to_metric_families(metrics_response.text)}
    assert {name for name, f in families.items() if f.type == "summary"} >= SUMMARIES
    assert families.keys() >= GAUGES_AND_COUNTERS | {f"marketcast_feed_{n}" for n in PER_VENUE}
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    for name in SUMMARIES - {"marketcast_feed_latency_seconds"}:
        assert values[f"{name}_count", ()] > 0, name
    assert values["marketcast_feed_latency_seconds_count", (("venue", "binance"),)] > 0
    assert values["marketcast_feed_book_messages_total", (("venue", "binance"),)] > 0
    assert values["marketcast_frames_sent_total", ()] > 0
    # The event loop's thread is one of the process's: its CPU is some of the process's.
    assert values["marketcast_event_loop_cpu_seconds_total", ()] > 0
    assert (
        values["marketcast_event_loop_cpu_seconds_total", ()]
        <= values["process_cpu_seconds_total", ()]
    )
    for point in stats["history"]:
        assert 0 <= point["cpu"]["event_loop"] <= point["cpu"]["process"]

    # Every metric the Grafana dashboard queries is exported.
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())]
    assert len(exprs) >= 20
    exported = {name for name, _ in values}
    queried = {name for expr in exprs for name in re.findall(r"\bmarketcast_\w+", expr)}
    assert queried - exported == set()
    assert queried >= {f"{name}_count" for name in ("marketcast_end_to_end_seconds",)}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # Every query is scoped to the dashboard's instance variable; latencies come from the
    # histograms, which add up across instances (quantiles do not).
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for expr in exprs:
        for selector in re.findall(r"\b(?:marketcast|process)_\w+(\{[^}]*\})?", expr):
            assert selector.startswith('{instance=~"$instance"'), expr
    assert not [expr for expr in exprs if 'quantile="' in expr or "quantile=~" in expr]


PAGE_STATE = """JSON.stringify({
  rows: [...document.querySelectorAll('#instruments tbody tr')].map(
    (tr) => [tr.dataset.instrument, tr.querySelector('td.state').textContent]),
  venues: [...document.querySelectorAll('#venues tbody tr')].map((tr) => tr.dataset.venue),
  charts: Object.fromEntries([...document.querySelectorAll('svg.chart')].map(
    (svg) => [svg.dataset.chart, Object.fromEntries([...svg.querySelectorAll('path')].map(
      (line) => [line.dataset.series, Number(line.dataset.points)]))])),
  status: document.getElementById('status').className,
})"""

LATENCY_CHARTS = ("feed_latency-binance", "ingest", "publish", "end_to_end", "db_flush")


async def until(probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    """Poll ``probe`` until ``done`` holds for its value; fail with the last value seen."""
    value = None
    try:
        async with asyncio.timeout(30):
            # The page's state lives in the browser: polling it is the only way to see it.
            while not done(value := await probe()):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"the page never showed live data; last state: {value}") from None
    return value


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
async def test_the_dashboard_page_shows_live_data(demo: RunningServer, tmp_path: Path) -> None:
    def live(state: dict[str, Any] | None) -> bool:
        if state is None:
            return False
        charts = state["charts"]
        return (
            state["rows"] == [[name, "live"] for name in INSTRUMENTS]
            and all(
                chart in charts and all(points >= 2 for points in charts[chart].values())
                for chart in LATENCY_CHARTS
            )
            and charts.get("rates", {}).get("feed messages", 0) >= 2
        )

    # A subscriber makes publish latency; it reads nothing, so its queue must not fill up
    # (a full queue would hold back the server's closing handshake).
    subscriber = connect(demo.url, max_queue=None)
    async with subscriber as ws, browser(tmp_path / "chromium") as tools:
        await subscribe(ws, 1, channel="bbo", instruments=INSTRUMENTS)
        page = await open_page(tools, f"{demo.http_url}/dashboard")

        async def state() -> dict[str, Any] | None:
            text = await page.evaluate(PAGE_STATE)
            return None if text is None else orjson.loads(text)

        shown = await until(state, live)
        # It keeps polling: the charts grow by the next second's point.
        await until(
            state,
            lambda now: now["charts"]["ingest"]["p50"] > shown["charts"]["ingest"]["p50"],
        )
        # A line never crosses an interval without samples or a gap in time.
        runs = orjson.loads(
            await page.evaluate(
                "JSON.stringify(["
                "segments([1, 2, null, 3, 4], [0, 1e9, 2e9, 3e9, 4e9], [1e9, 1e9, 1e9, 1e9, 1e9]),"
                "segments([1, 2, 3, 4], [0, 1e9, 9e9, 10e9], [1e9, 1e9, 1e9, 1e9]),"
                "segments([null, 5], [0, 1e9], [1e9, 1e9]),"
                "])"
            )
        )
        assert runs == [[[0, 1], [3, 4]], [[0, 1], [2, 3]], [[1]]]
        segments = await page.evaluate(
            "JSON.stringify([...document.querySelectorAll('svg.chart path')]"
            ".map((p) => [Number(p.dataset.segments), p.getAttribute('d').split('M').length - 1]))"
        )
        assert all(count == moves for count, moves in orjson.loads(segments))
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard.png").write_bytes(await page.screenshot())
        requested = page.requested_urls()
    assert shown["status"] == "ok"
    assert shown["venues"] == ["binance"]
    assert set(shown["charts"]) >= {
        *LATENCY_CHARTS,
        *("event_loop_lag", "rates", "clients", "db", "cpu"),
    }
    assert set(shown["charts"]["cpu"]) == {"event loop", "process"}
    for chart in LATENCY_CHARTS:
        assert set(shown["charts"][chart]) == {"p50", "p99", "p99.9"}
    # Self-contained: the page fetched nothing but itself and /stats from this server.
    assert requested[0] == f"{demo.http_url}/dashboard"
    assert {url.split("?")[0] for url in requested[1:]} == {f"{demo.http_url}/stats"}
