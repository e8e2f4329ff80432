"""The whole path over real sockets: simulated venue -> feed -> book -> server -> client,
and -> SQLite; the process stops on SIGTERM with every row flushed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from app.runtime import RunningServer, serve
from app.settings import Settings, SimulatorSettings
from book.fixed import format_fixed
from book.snapshot import BookSnapshot
from tests.waiting import eventually, within

INSTRUMENTS = ["binance:BTC-USDT", "binance:ETH-USDT", "binance:SOL-USDT"]


def demo_settings(db: Path) -> Settings:
    settings = Settings.demo().with_port(0).with_storage_path(str(db))
    binance = tuple(venue for venue in settings.venues if venue.id == "binance")
    return replace(
        settings, venues=binance, simulator=SimulatorSettings(updates_per_second=200.0, seed=3)
    )


def wire_bbo(snapshot: BookSnapshot) -> dict[str, Any]:
    """What a ``bbo`` frame must say about ``snapshot`` (exact decimal strings)."""

    def text(value: int | None) -> str | None:
        return None if value is None else format_fixed(value)

    return {
        "type": "bbo",
        "instrument": snapshot.instrument,
        "seq": snapshot.seq,
        "bid": text(snapshot.bid),
        "bid_qty": text(snapshot.bid_qty),
        "ask": text(snapshot.ask),
        "ask_qty": text(snapshot.ask_qty),
        "ts_event": snapshot.ts_event,
        "ts_recv": snapshot.ts_recv,
    }


@pytest.fixture
async def running(
    tmp_path: Path,
) -> AsyncIterator[tuple[RunningServer, dict[tuple[str, int], BookSnapshot]]]:
    ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    published: dict[tuple[str, int], BookSnapshot] = {}

    def on_ready(server: RunningServer) -> None:
        server.registry.on_snapshot(lambda s, _: published.__setitem__((s.instrument, s.seq), s))
        ready.set_result(server)

    task = asyncio.create_task(serve(demo_settings(tmp_path / "e2e.db"), on_ready=on_ready))
    server = await asyncio.wait_for(ready, 15)
    try:
        yield server, published
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_subscriber_frames_equal_the_published_books(
    running: tuple[RunningServer, dict[tuple[str, int], BookSnapshot]],
) -> None:
    server, published = running
    await eventually(lambda: all(server.registry.is_live(i) for i in INSTRUMENTS), "books live")
    async with connect(server.url) as ws:
        await ws.send(
            orjson.dumps(
                {"op": "subscribe", "id": 1, "channel": "bbo", "instruments": INSTRUMENTS}
            ).decode()
        )
        frames: list[dict[str, Any]] = []
        ack = None
        while len(frames) < 60:
            message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] == "ack":
                ack = message
                continue
            frames.append(message)
    assert ack == {
        "type": "ack",
        "id": 1,
        "op": "subscribe",
        "channel": "bbo",
        "instruments": INSTRUMENTS,
    }
    last_seq: dict[str, int] = {}
    for frame in frames:
        snapshot = published[frame["instrument"], frame["seq"]]
        ts_send = frame.pop("ts_send")
        assert frame == wire_bbo(snapshot)
        assert ts_send >= snapshot.ts_book >= snapshot.ts_recv
        assert frame["seq"] > last_seq.get(frame["instrument"], 0)
        last_seq[frame["instrument"]] = frame["seq"]
    assert set(last_seq) == set(INSTRUMENTS)


async def test_sigterm_stops_the_process_with_every_row_flushed(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    config = tmp_path / "demo.toml"
    config.write_text(
        f"""
[server]
port = 0
[storage]
path = "{db}"
[simulator]
updates_per_second = 200.0
[[venues]]
id = "binance"
symbols = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
simulate = true
"""
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        url = await asyncio.wait_for(_banner_url(process.stdout), 20)
        received: list[dict[str, Any]] = []
        async with connect(url) as ws:
            await ws.send(
                orjson.dumps(
                    {"op": "subscribe", "id": 1, "channel": "bbo", "instruments": INSTRUMENTS}
                ).decode()
            )
            while len(received) < 40:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if message["type"] == "bbo":
                    received.append(message)
        process.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(process.stdout.read(), 20)).decode()
        assert await within(process.wait(), "the server's exit on SIGTERM") == 0, output
    finally:
        if process.returncode is None:
            process.kill()
            await within(process.wait(), "the killed server's exit")
    assert "Traceback" not in output
    with sqlite3.connect(db) as conn:
        rows = {
            (f"{venue}:{symbol}", seq): (bid, bid_qty, ask, ask_qty)
            for venue, symbol, seq, bid, bid_qty, ask, ask_qty in conn.execute(
                "SELECT venue, symbol, seq, bid_px, bid_qty, ask_px, ask_qty FROM bbo"
            )
        }
        kinds = [kind for (kind,) in conn.execute("SELECT kind FROM feed_events ORDER BY ts")]
    for frame in received:
        assert rows[frame["instrument"], frame["seq"]] == (
            frame["bid"],
            frame["bid_qty"],
            frame["ask"],
            frame["ask_qty"],
        )
    assert len(rows) >= len(received)
    assert kinds[0] == "connect" and kinds.count("live") == 3


async def _banner_url(stdout: asyncio.StreamReader) -> str:
    while True:
        line = (await stdout.readline()).decode()
        if not line:
            raise AssertionError("the server exited before printing its URL")
        if "websocket:" in line:
            return line.split("websocket:", 1)[1].strip()
