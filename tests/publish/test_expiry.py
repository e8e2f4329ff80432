"""A token's expiry on an open connection, over real websockets: at ``exp`` the streams
that needed the token stop (profit always, market data when the server requires auth),
the client is told with one ``token_expired`` error frame, and an ``auth`` with a fresh
token resumes them, current state first."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from book.status import InstrumentState
from publish.auth import TokenAuthority
from tests.publish.support import BTC, ETH, KRAKEN_BTC, TS_SEND, bbo, receive, send
from tests.publish.trading import SECRET, Desk, login, open_request, trading

pytestmark = pytest.mark.timeout(30)

TTL = 1
"""Seconds a short-lived token lives: the tests wait for it to expire."""


def second_aligned_clock() -> Callable[[], float]:
    """The real clock, shifted so that now is a whole second: a token issued now with a
    ttl of N seconds lives N seconds (``exp`` is whole seconds)."""
    now = time.time()
    offset = math.ceil(now) - now
    return lambda: time.time() + offset


async def auth(ws: ClientConnection, desk: Desk, account: str, ttl: float) -> None:
    await send(ws, op="auth", id="auth", token=desk.tokens.issue(account, ttl=ttl))
    reply = await receive(ws)
    assert (reply["type"], reply["account"]) == ("ack", account), reply


async def nothing_more(ws: ClientConnection) -> None:
    """Nothing is pending: a ping sent now is answered before anything else arrives."""
    await send(ws, op="ping", id="sync")
    assert await receive(ws) == {"type": "pong", "id": "sync"}


def expired(stopped: str) -> dict[str, object]:
    return {
        "type": "error",
        "id": None,
        "code": "token_expired",
        "message": "the token has expired; send auth with a fresh token to continue "
        f"(stopped until then: {stopped})",
    }


def total(pnl: str) -> dict[str, object]:
    return {
        "type": "profit_total",
        "account": "acct-1",
        "pnl": pnl,
        "positions": 1,
        "unmarked": 0,
        "ts_send": TS_SEND,
    }


def profit(mark: str, pnl: str, seq: int) -> dict[str, object]:
    return {
        "type": "profit",
        "account": "acct-1",
        "position_id": "p-1",
        "instrument": BTC,
        "side": "buy",
        "qty": "0.5",
        "entry": "43000.1",
        "mark": mark,
        "pnl": pnl,
        "seq": seq,
        "ts_send": TS_SEND,
    }


async def test_profit_stops_at_expiry_market_data_flows_and_fresh_auth_resumes_profit(
    tmp_path: Path,
) -> None:
    tokens = TokenAuthority(SECRET, clock=second_aligned_clock())
    async with trading(tmp_path / "expiry.db", tokens=tokens) as desk:
        desk.feed.status(BTC, InstrumentState.LIVE)
        desk.feed.quote(BTC, ("43000.1", "1"), ("43000.2", "1"))
        async with connect(desk.server.url) as ws:
            await login(ws, desk, "acct-1")
            await send(ws, **open_request(1, "p-1"))
            assert (await receive(ws))["type"] == "ack"
            await auth(ws, desk, "acct-1", ttl=TTL)
            await send(ws, op="subscribe", id=2, channel="profit", account="acct-1")
            await send(ws, op="subscribe", id=3, channel="bbo", instruments=[BTC])
            before = [await receive(ws) for _ in range(5)]
            # No request is sent: the server's timer tells the client.
            at_expiry = await receive(ws)
            desk.feed.quote(BTC, ("43010.1", "1"), ("43010.2", "1"))
            market_data = await receive(ws)
            await nothing_more(ws)
            await send(ws, op="subscribe", id=4, channel="profit", account="acct-1")
            refused = await receive(ws)
            await login(ws, desk, "acct-1")
            resumed = [await receive(ws) for _ in range(2)]
            desk.feed.quote(BTC, ("43020.1", "1"), ("43020.2", "1"))
            after = [await receive(ws) for _ in range(3)]
    assert [frame["type"] for frame in before] == ["ack", "profit", "profit_total", "ack", "bbo"]
    assert at_expiry == expired("profit acct-1")
    assert market_data == bbo(BTC, 2, ("43010.1", "1"), ("43010.2", "1"))
    assert refused == {
        "type": "error",
        "id": 4,
        "code": "auth_required",
        "message": "authenticate first (op auth, unexpired token)",
    }
    assert resumed == [profit("43010.1", "5", 2), total("5")]
    assert sorted(after, key=lambda frame: str(frame["type"])) == [
        bbo(BTC, 3, ("43020.1", "1"), ("43020.2", "1")),
        profit("43020.1", "10", 3),
        total("10"),
    ]


async def test_market_data_that_needs_auth_stops_at_expiry_and_resumes_on_auth(
    tmp_path: Path,
) -> None:
    tokens = TokenAuthority(SECRET, clock=second_aligned_clock())
    async with trading(
        tmp_path / "expiry.db", tokens=tokens, market_data_requires_auth=True
    ) as desk:
        desk.feed.status(BTC, InstrumentState.LIVE)
        desk.feed.quote(BTC, ("43000.1", "1"), ("43000.2", "1"))
        async with connect(desk.server.url) as ws:
            await auth(ws, desk, "acct-1", ttl=TTL)
            await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC])
            await send(ws, op="subscribe", id=2, channel="status")
            assert [(await receive(ws))["type"] for _ in range(2)] == ["ack", "bbo"]
            assert (await receive(ws))["type"] == "ack"
            statuses = [await receive(ws) for _ in range(3)]
            at_expiry = await receive(ws)
            desk.feed.quote(BTC, ("43010.1", "1"), ("43010.2", "1"))
            desk.feed.status(ETH, InstrumentState.LIVE)
            await nothing_more(ws)
            await login(ws, desk, "acct-1")
            resumed = [await receive(ws) for _ in range(4)]
            await nothing_more(ws)
    assert [frame["type"] for frame in statuses] == ["status"] * 3
    assert at_expiry == expired(f"bbo {BTC}, status")
    # Resumed as fresh subscribes would be: the current state of each.
    assert sorted(resumed, key=lambda frame: (frame["type"], frame["instrument"])) == [
        bbo(BTC, 2, ("43010.1", "1"), ("43010.2", "1")),
        {"type": "status", "instrument": BTC, "state": "live", "reason": "synced"},
        {"type": "status", "instrument": ETH, "state": "live", "reason": "synced"},
        {"type": "status", "instrument": KRAKEN_BTC, "state": "syncing", "reason": "starting"},
    ]
