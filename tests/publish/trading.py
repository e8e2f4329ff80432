"""A whole trading stack for position and profit tests: registry, fan-out, real storage
(SQLite in a temporary file, or any backend given), flusher, position book, profit engine
and the server on loopback with token auth."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection

from publish.auth import AuthPolicy, TokenAuthority
from publish.catalog import RegistryCatalog
from publish.fanout import Fanout
from publish.positions import PositionBook
from publish.profit import ProfitEngine
from publish.server import MarketServer
from publish.storage import FlushedPositionStore, SqliteBackend, StorageBackend, StorageFlusher
from tests.publish.storage.support import running as flusher_running
from tests.publish.support import (
    CAPTURE_DEPTH,
    Feed,
    clock,
    new_registry,
    receive,
    send,
)

SECRET = b"0123456789abcdef-trading-secret"
OPENED_TS = 1_700_000_000_100_000_000
"""The position book's clock starts here and moves by 1 per reading."""


@dataclass(frozen=True, slots=True)
class Desk:
    feed: Feed
    fanout: Fanout
    server: MarketServer
    backend: StorageBackend
    flusher: StorageFlusher
    book: PositionBook
    engine: ProfitEngine
    tokens: TokenAuthority


@asynccontextmanager
async def trading(
    db: Path,
    *,
    backend: StorageBackend | None = None,
    ack_timeout: float = 5.0,
    max_positions_per_account: int = 10_000,
    restore: bool = True,
    tokens: TokenAuthority | None = None,
    market_data_requires_auth: bool = False,
) -> AsyncIterator[Desk]:
    """The stack over ``backend`` (default: SQLite at ``db``), open positions reloaded;
    ``tokens`` default to an authority with ``SECRET`` and the real clock."""
    registry = new_registry()
    fanout = Fanout(registry, clock=clock, book_depth=CAPTURE_DEPTH)
    storage = backend if backend is not None else SqliteBackend(db)
    await storage.open()
    flusher = StorageFlusher(storage, window_ms=5, retry_initial_ms=5, retry_max_ms=50)
    book = PositionBook(
        RegistryCatalog(registry),
        FlushedPositionStore(flusher, storage),
        ack_timeout=ack_timeout,
        max_positions_per_account=max_positions_per_account,
        clock=itertools.count(OPENED_TS).__next__,
    )
    engine = ProfitEngine(registry, fanout)
    book.add_listener(engine)
    if restore:
        await book.load()
    tokens = tokens if tokens is not None else TokenAuthority(SECRET)
    policy = AuthPolicy(tokens=tokens, market_data_requires_auth=market_data_requires_auth)
    try:
        async with (
            flusher_running(flusher),
            MarketServer(registry, fanout, auth=policy, positions=book) as server,
        ):
            yield Desk(Feed(registry), fanout, server, storage, flusher, book, engine, tokens)
        await flusher.drain()
    finally:
        await storage.close()


async def login(ws: ClientConnection, desk: Desk, account: str) -> None:
    await send(ws, op="auth", id="auth", token=desk.tokens.issue(account, ttl=3600))
    reply = await receive(ws)
    assert (reply["type"], reply["account"]) == ("ack", account), reply


def open_request(
    request_id: object,
    position_id: str,
    side: str = "buy",
    qty: str = "0.5",
    price: str = "43000.1",
    instrument: str = "binance:BTC-USDT",
) -> dict[str, Any]:
    return {
        "op": "position.open",
        "id": request_id,
        "position": {
            "id": position_id,
            "instrument": instrument,
            "side": side,
            "qty": qty,
            "price": price,
        },
    }


def stored(
    position_id: str,
    account: str,
    opened_ts: int,
    *,
    side: str = "buy",
    qty: str = "0.5",
    price: str = "43000.1",
    instrument: str = "binance:BTC-USDT",
    closed_ts: int | None = None,
) -> dict[str, Any]:
    """A position as the acks carry it."""
    return {
        "id": position_id,
        "account": account,
        "instrument": instrument,
        "side": side,
        "qty": qty,
        "price": price,
        "opened_ts": opened_ts,
        "closed_ts": closed_ts,
    }
