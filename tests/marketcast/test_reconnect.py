"""The client across a server killed (SIGKILL) and restarted mid-stream: it yields
``Disconnected``, reconnects by itself, re-authenticates, resubscribes, yields
``Reconnected`` and goes on, never yielding an older seq for a key."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import pytest

import marketcast
from publish.auth import TokenAuthority
from tests.waiting import eventually, within

pytestmark = pytest.mark.timeout(120)

SECRET = "reconnect-test-secret-0123456789"
BTC = "binance:BTC-USDT"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "server.toml"
    config.write_text(
        f"""
[server]
port = {port}
[storage]
path = "{tmp_path / "m.db"}"
[auth]
secret = "{SECRET}"
market_data_requires_auth = true
[simulator]
updates_per_second = 100.0
[[venues]]
id = "binance"
symbols = ["BTC-USDT"]
simulate = true
"""
    )
    return config


@asynccontextmanager
async def server_process(config: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``marketcast run`` as a child process, once its banner is out."""
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

        def banner() -> bool:
            assert process.returncode is None, log.read_text()
            return "websocket:" in log.read_text()

        await eventually(banner, "the server's banner", limit=60)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await within(process.wait(), "the server's exit")


async def next_message(client: marketcast.Client) -> marketcast.Message:
    async with asyncio.timeout(30):
        return await anext(client)


async def test_the_client_rides_through_a_server_killed_and_restarted(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    url = f"ws://127.0.0.1:{port}/ws"
    token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=600)
    seen: list[marketcast.Message] = []
    backoff = marketcast.Backoff(initial=0.05, maximum=0.5)
    async with server_process(config, tmp_path / "first.log") as first:
        client = marketcast.connect(url, token=token, backoff=backoff)
        await client.__aenter__()
        try:
            await client.subscribe("bbo", instruments=[BTC])
            while sum(isinstance(message, marketcast.Bbo) for message in seen) < 5:
                seen.append(await next_message(client))
            opened = await client.open_position(
                "p-1", instrument=BTC, side="buy", qty="0.5", price="60000"
            )
            await client.subscribe("profit", account="acct-1")
            first.send_signal(signal.SIGKILL)
            await first.wait()
        except BaseException:
            await client.close()
            raise
    try:
        while not isinstance(seen[-1], marketcast.Disconnected):
            seen.append(await next_message(client))
        assert not client.connected
        # Asked while disconnected: sent once the client is back.
        second_open = asyncio.create_task(
            client.open_position("p-2", instrument=BTC, side="sell", qty="1", price="70000")
        )
        async with server_process(config, tmp_path / "second.log"):
            reconnected = len(seen)
            while not (
                any(isinstance(m, marketcast.ProfitTotal) for m in seen[reconnected:])
                and any(isinstance(m, marketcast.Bbo) for m in seen[reconnected:])
            ):
                seen.append(await next_message(client))
            p2 = await asyncio.wait_for(second_open, 30)
            assert client.connected
    finally:
        await client.close()

    assert opened == marketcast.Position(
        "p-1", "acct-1", BTC, "buy", Decimal("0.5"), Decimal("60000"), opened.opened_ts, None
    )
    assert (p2.id, p2.side, p2.qty, p2.closed_ts) == ("p-2", "sell", Decimal("1"), None)
    after = seen[reconnected:]
    assert isinstance(after[0], marketcast.Reconnected)
    assert after[0].url == url and after[0].attempts >= 1
    # Re-authenticated and resubscribed: the profit channel needs the token, and p-1
    # (reloaded from the database by the restarted server) is in the account's total.
    totals = [m for m in after if isinstance(m, marketcast.ProfitTotal)]
    assert totals[0].account == "acct-1" and totals[0].positions >= 1
    last_seq: dict[str, int] = {}
    for message in seen:
        if isinstance(message, marketcast.Bbo):
            assert message.seq >= last_seq.get(message.instrument, 0)
            last_seq[message.instrument] = message.seq
    assert sum(isinstance(m, marketcast.Disconnected) for m in seen) == 1
