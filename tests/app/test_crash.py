"""Crash safety: a server process taking a stream of position opens is killed with SIGKILL;
after a restart on the same database every acknowledged position is there exactly once,
as acknowledged, and profit resumes for it. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from book.fixed import format_fixed, from_decimal, parse_fixed
from publish.auth import TokenAuthority
from tests.postgres import PG_DSN, fresh_schema, pg_query
from tests.publish.storage.support import query
from tests.waiting import eventually, within

# Two server starts and 5,000 opens: slow on a loaded machine. Every wait below is
# bounded by itself, so a hang fails naming what never came.
pytestmark = pytest.mark.timeout(300)

SECRET = "crash-test-secret-0123456789abcdef"
BTC = "binance:BTC-USDT"
OPENS = 5_000
KILL_AFTER_ACKS = 300


@dataclass(frozen=True, slots=True)
class Storage:
    config: str
    """The ``[storage]`` table of the config file."""
    positions: Callable[[], Awaitable[list[tuple[Any, ...]]]]
    """``(id, account, instrument, side, qty, price, opened_ts, closed_ts)`` rows, amounts
    as wire decimal text."""


def _text(value: Any) -> str:
    return format_fixed(from_decimal(value) if isinstance(value, Decimal) else parse_fixed(value))


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    select = "SELECT id, account, instrument, side, qty, entry_px, opened_ts, closed_ts FROM {}"

    def as_text(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [(*row[:4], _text(row[4]), _text(row[5]), *row[6:]) for row in rows]

    if request.param == "sqlite":
        db = tmp_path / "crash.db"

        async def sqlite_rows() -> list[tuple[Any, ...]]:
            return as_text(query(db, select.format("positions")))

        yield Storage(f'backend = "sqlite"\npath = "{db}"', sqlite_rows)
        return
    async with fresh_schema() as schema:

        async def postgres_rows() -> list[tuple[Any, ...]]:
            return as_text(await pg_query(select.format(f'"{schema}".positions')))

        yield Storage(f'backend = "postgres"\ndsn = "{PG_DSN}"\nschema = "{schema}"', postgres_rows)


def write_config(tmp_path: Path, storage: Storage) -> Path:
    config = tmp_path / "crash.toml"
    config.write_text(
        f"""
[server]
port = 0
[server.limits]
ops_per_second = 1000000.0
ops_burst = 1000000
[storage]
{storage.config}
[auth]
secret = "{SECRET}"
secret_file = "{tmp_path / "secret"}"
[simulator]
updates_per_second = 50.0
[[venues]]
id = "binance"
symbols = ["BTC-USDT"]
simulate = true
"""
    )
    return config


@asynccontextmanager
async def server_process(
    config: Path, log: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``marketcast run`` as a child process (output to ``log``) and its websocket URL."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "run",
            "--config",
            str(config),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        url = ""

        def banner() -> bool:
            nonlocal url
            for line in log.read_text().splitlines():
                if "websocket:" in line:
                    url = line.split("websocket:", 1)[1].strip()
            assert process.returncode is None, log.read_text()
            return bool(url)

        await eventually(banner, "the server's banner", limit=60)
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
        await within(process.wait(), "the server process ended")


async def login_and_wait_for_btc(ws: ClientConnection) -> None:
    token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=600)
    await ws.send(orjson.dumps({"op": "auth", "id": "auth", "token": token}).decode())
    await ws.send(
        orjson.dumps(
            {"op": "subscribe", "id": "bbo", "channel": "bbo", "instruments": [BTC]}
        ).decode()
    )
    # The book is live: BTC is known.
    while orjson.loads(await within(ws.recv(), "a bbo frame"))["type"] != "bbo":
        pass
    await ws.send(
        orjson.dumps(
            {"op": "unsubscribe", "id": "u", "channel": "bbo", "instruments": [BTC]}
        ).decode()
    )


def open_request(n: int) -> bytes:
    return orjson.dumps(
        {
            "op": "position.open",
            "id": n,
            "position": {
                "id": f"p-{n}",
                "instrument": BTC,
                "side": "sell" if n % 2 else "buy",
                "qty": f"0.{n + 1:06d}",
                "price": f"61000.{n:012d}",
            },
        }
    )


async def test_every_acknowledged_position_survives_sigkill(
    tmp_path: Path, storage: Storage
) -> None:
    config = write_config(tmp_path, storage)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    acked: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []

    async with server_process(config, first_log) as (process, url), connect(url) as ws:
        await login_and_wait_for_btc(ws)

        async def stream_opens() -> None:
            for n in range(OPENS):
                await ws.send(open_request(n).decode())
                if n % 50 == 0:
                    await asyncio.sleep(0)

        sender = asyncio.create_task(stream_opens())
        try:
            while True:
                raw = await within(ws.recv(), f"ack {len(acked) + 1} or the kill's close")
                message = orjson.loads(raw)
                if message["type"] == "ack" and message.get("op") == "position.open":
                    acked[message["position"]["id"]] = message["position"]
                elif message["type"] == "error":
                    errors.append(message)
                if len(acked) == KILL_AFTER_ACKS and process.returncode is None:
                    process.send_signal(signal.SIGKILL)  # mid-stream, opens still in flight
                    await within(process.wait(), "the killed server's exit")
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        assert await within(process.wait(), "the killed server's exit") == -signal.SIGKILL

    assert errors == []
    assert len(acked) >= KILL_AFTER_ACKS
    stored = await storage.positions()
    # Each acknowledged position exactly once, exactly as acknowledged; others may have
    # committed without their ack getting out before the kill, never half-written.
    assert Counter(row[0] for row in stored).most_common(1)[0][1] == 1
    by_id = {row[0]: row for row in stored}
    for position_id, position in acked.items():
        assert by_id[position_id] == (
            position_id,
            "acct-1",
            BTC,
            position["side"],
            position["qty"],
            position["price"],
            position["opened_ts"],
            None,
        )

    # Restarted: the positions are back in the book and profit resumes for all of them.
    async with server_process(config, second_log) as (process, url), connect(url) as ws:
        await login_and_wait_for_btc(ws)
        await ws.send(
            orjson.dumps(
                {"op": "subscribe", "id": "profit", "channel": "profit", "account": "acct-1"}
            ).decode()
        )
        marked: set[str] = set()
        total: dict[str, Any] = {}
        while not total:
            message = orjson.loads(await within(ws.recv(), "profit for every position"))
            if message["type"] == "profit":
                marked.add(message["position_id"])
            elif message["type"] == "profit_total":
                total = message
        first = next(iter(acked.values()))
        retry = orjson.loads(open_request(int(first["id"].removeprefix("p-"))))
        await ws.send(orjson.dumps(retry).decode())
        while True:
            reply = orjson.loads(await within(ws.recv(), "the retried open's ack"))
            if reply["type"] == "ack" and reply["id"] == retry["id"]:
                break
        process.send_signal(signal.SIGTERM)
        assert await within(process.wait(), "the server's exit on SIGTERM") == 0
    assert marked == set(by_id) and marked >= set(acked)
    assert total["positions"] == len(by_id) and total["unmarked"] == 0
    assert reply["position"] == first  # the same open again is acknowledged as stored
    assert "Traceback" not in first_log.read_text() + second_log.read_text()
