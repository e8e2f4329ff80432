"""``GET /v1/history/bbo/...`` and ``marketcast history`` against a running server: what a
subscriber saw is what history returns for the same window, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

import marketcast
from app.commands.history import history
from app.runtime import RunningServer
from app.settings import Settings, SimulatorSettings
from publish.history import parse_time
from publish.wire import TimeFormat, format_timestamp
from tests.app.serving import running
from tests.postgres import PG_DSN, fresh_schema
from tests.waiting import eventually, eventually_async

pytestmark = pytest.mark.timeout(90)

BTC = "binance:BTC-USDT"


@pytest.fixture(params=["sqlite", "postgres"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = Settings.demo().with_port(0).with_storage_path(str(tmp_path / "m.db"))
    settings = replace(
        settings,
        venues=tuple(venue for venue in settings.venues if venue.id == "binance"),
        simulator=SimulatorSettings(updates_per_second=100.0, seed=5),
    )
    async with fresh_schema() as schema:
        if request.param == "postgres":
            storage = replace(settings.storage, backend="postgres", dsn=PG_DSN, schema=schema)
            settings = replace(settings, storage=storage)
        async with running(settings, ready_within=30) as started:
            yield started


async def read_history(server: RunningServer, **query: str) -> list[marketcast.Bbo]:
    out = io.BytesIO()
    status = await history(
        server.http_url, BTC, start=query.get("start"), end=query.get("end"), out=out
    )
    assert status == 0
    lines = out.getvalue().splitlines()
    return [_bbo(orjson.loads(line)) for line in lines]


def _bbo(obj: dict[str, object]) -> marketcast.Bbo:
    message = marketcast.decode(obj)
    assert isinstance(message, marketcast.Bbo)
    return message


def unsent(message: marketcast.Bbo) -> marketcast.Bbo:
    return replace(message, ts_send=0)


async def test_what_a_subscriber_saw_is_what_history_returns(server: RunningServer) -> None:
    seen: list[marketcast.Bbo] = []
    async with marketcast.connect(server.url) as client:
        await client.subscribe("bbo", instruments=[BTC])
        async with asyncio.timeout(30):
            async for message in client:
                if isinstance(message, marketcast.Bbo):
                    seen.append(message)
                if len(seen) == 40:
                    break
    window = {"start": str(seen[0].ts_recv), "end": str(seen[-1].ts_recv + 1)}
    stored: list[marketcast.Bbo] = []

    async def flushed() -> bool:
        stored[:] = await read_history(server, **window)
        return bool(stored) and stored[-1].seq == seen[-1].seq

    await eventually_async(flushed, "the window flushed")
    assert [m.seq for m in stored] == sorted({m.seq for m in stored})
    by_seq = {m.seq: unsent(m) for m in stored}
    # Every change the subscriber saw, with the same seq, prices and times; a change
    # conflated away between two of its frames (same publish tick) is only in history.
    assert [by_seq.get(m.seq) for m in seen] == [unsent(m) for m in seen]
    assert unsent(stored[0]) == unsent(seen[0])
    # The same window from an ISO 8601 time (microseconds: it may start a little earlier).
    iso = datetime.fromtimestamp(seen[0].ts_recv // 1000 / 1e6, UTC).isoformat()
    from_iso = await read_history(server, start=iso, end=window["end"])
    assert [unsent(m) for m in from_iso[-len(stored) :]] == [unsent(m) for m in stored]


async def test_history_over_http_streams_ndjson_and_names_bad_requests(
    server: RunningServer,
) -> None:
    await eventually(lambda: server.registry.is_live(BTC), "BTC live")
    base = f"{server.http_url}/v1/history/bbo/"
    async with httpx.AsyncClient() as http:

        async def some_rows() -> bool:
            response = await http.get(base + BTC, params={"limit": "5"})
            return len(response.content.splitlines()) == 5

        await eventually_async(some_rows, "five rows stored")
        response = await http.get(base + BTC, params={"limit": "5"})
        unknown = await http.get(base + "binance:NOPE-USDT")
        bad_from = await http.get(base + BTC, params={"from": "yesterday"})
        bad_limit = await http.get(base + BTC, params={"limit": "0"})
        bad_ts = await http.get(base + BTC, params={"ts": "fortnights"})
        as_iso = await http.get(base + BTC, params={"limit": "5", "ts": "iso"})
        # A client that leaves after the first line does not disturb the server.
        async with http.stream("GET", base + BTC) as partial:
            async for _ in partial.aiter_lines():
                break
        after = await http.get(base + BTC, params={"limit": "1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert [line["type"] for line in lines] == ["bbo"] * 5
    assert set(lines[0]) == {
        "type",
        "instrument",
        "seq",
        "bid",
        "bid_qty",
        "ask",
        "ask_qty",
        "ts_event",
        "ts_recv",
        "ts_send",
    }
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_instrument")
    assert (bad_from.status_code, bad_from.json()["code"]) == (400, "bad_request")
    assert "'yesterday' is neither nanoseconds" in bad_from.json()["message"]
    assert (bad_limit.status_code, bad_limit.json()["code"]) == (400, "bad_request")
    assert (bad_ts.status_code, bad_ts.json()["code"]) == (400, "bad_request")
    # ?ts= writes the same rows' timestamps as the websocket would.
    iso_lines = [orjson.loads(line) for line in as_iso.content.splitlines()]
    assert [line["seq"] for line in iso_lines] == [line["seq"] for line in lines]
    assert [line["ts_recv"] for line in iso_lines] == [
        format_timestamp(line["ts_recv"], TimeFormat.ISO) for line in lines
    ]
    assert after.status_code == 200 and len(after.content.splitlines()) == 1
    err = io.StringIO()
    assert await history(server.http_url, "binance:NOPE-USDT", out=io.BytesIO(), err=err) == 1
    assert (
        err.getvalue() == "marketcast: unknown_instrument: unknown instrument 'binance:NOPE-USDT'\n"
    )


def test_times_are_nanoseconds_or_iso_8601() -> None:
    assert parse_time("1795300703594172015", default=0) == 1795300703594172015
    assert parse_time(None, default=7) == 7
    assert parse_time("2026-12-03T07:00:00Z", default=0) == 1_796_281_200_000_000_000
    assert parse_time("2026-12-03T07:00:00.123456", default=0) == 1_796_281_200_123_456_000
    assert parse_time("2026-12-03T09:00:00+02:00", default=0) == 1_796_281_200_000_000_000
    with pytest.raises(ValueError, match="neither nanoseconds"):
        parse_time("soon", default=0)
