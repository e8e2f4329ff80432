"""Shared helpers for the publish tests: a feed stand-in that drives the real registry,
a running server on loopback, and the exact wire objects the server must send."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from book.fixed import parse_fixed
from book.l2 import L2Book
from book.registry import BookRegistry
from book.snapshot import BookSnapshot, Level
from book.status import InstrumentState, InstrumentStatus
from publish.auth import AuthPolicy
from publish.channels import BookChannel
from publish.client import ServerLimits
from publish.fanout import Fanout, MetricsProvider
from publish.protocol import Channel
from publish.server import MarketServer
from tests.waiting import within

BTC = "binance:BTC-USDT"
ETH = "binance:ETH-USDT"
KRAKEN_BTC = "kraken:BTC-USD"
INSTRUMENTS = (BTC, ETH, KRAKEN_BTC)

CAPTURE_DEPTH = 5
"""Levels per side the stand-in feed captures into snapshots (the server's book depth)."""

TS_SEND = 1_700_000_000_999_000_000
"""What the tests' injected clock always reads, so ``ts_send`` is an exact value."""


STATUS_TS = 1_700_000_000_000_000_000


def clock() -> int:
    return TS_SEND


class Feed:
    """Does what a venue feed does to the registry: one ``L2Book`` per instrument, a
    snapshot published after each whole change, status changes."""

    def __init__(self, registry: BookRegistry) -> None:
        self.registry = registry
        self._books: dict[str, L2Book] = {}

    def status(self, instrument: str, state: InstrumentState, reason: str = "synced") -> None:
        self.registry.set_status(InstrumentStatus(instrument, state, reason, STATUS_TS))

    def quote(
        self,
        instrument: str,
        bid: tuple[str, str] | None,
        ask: tuple[str, str] | None,
    ) -> BookSnapshot:
        """Replace the book with one level per side (``None`` = empty side) and publish."""
        return self.levels(instrument, [] if bid is None else [bid], [] if ask is None else [ask])

    def levels(
        self, instrument: str, bids: Sequence[tuple[str, str]], asks: Sequence[tuple[str, str]]
    ) -> BookSnapshot:
        """Replace the book with these levels (decimal text) and publish."""
        book = self._books.setdefault(instrument, L2Book(instrument, capture_depth=CAPTURE_DEPTH))
        book.load(_levels(bids), _levels(asks))
        seq = book.seq + 1
        snapshot = book.snapshot(ts_event=seq * 1_000, ts_recv=seq * 1_000 + 7, ts_book=seq)
        self.registry.publish(snapshot)
        return snapshot


def _levels(levels: Sequence[tuple[str, str]]) -> list[Level]:
    return [(parse_fixed(price), parse_fixed(qty)) for price, qty in levels]


def bbo(
    instrument: str, seq: int, bid: tuple[str, str] | None, ask: tuple[str, str] | None
) -> dict[str, object]:
    """The exact ``bbo`` wire object a ``Feed.quote`` with these values must produce."""
    return {
        "type": "bbo",
        "instrument": instrument,
        "seq": seq,
        "bid": None if bid is None else bid[0],
        "bid_qty": None if bid is None else bid[1],
        "ask": None if ask is None else ask[0],
        "ask_qty": None if ask is None else ask[1],
        "ts_event": seq * 1_000,
        "ts_recv": seq * 1_000 + 7,
        "ts_send": TS_SEND,
    }


def split_frames(data: bytes) -> list[bytes]:
    """The payloads of the unmasked text frames in ``data`` (what a sink was given)."""
    payloads = []
    while data:
        assert data[0] == 0x81, "a final, unmasked text frame"
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        payloads.append(data[start : start + length])
        data = data[start + length :]
    return payloads


def new_registry(instruments: Sequence[str] = INSTRUMENTS) -> BookRegistry:
    registry = BookRegistry()
    for instrument in instruments:
        registry.add_instrument(instrument)
    return registry


@dataclass(frozen=True, slots=True)
class Market:
    feed: Feed
    fanout: Fanout
    server: MarketServer


@asynccontextmanager
async def running(
    limits: ServerLimits | None = None,
    *,
    auth: AuthPolicy | None = None,
    instruments: Sequence[str] = INSTRUMENTS,
    metrics: MetricsProvider | None = None,
    metrics_interval: float = 1.0,
) -> AsyncIterator[Market]:
    """A server on 127.0.0.1, port 0, over a fresh registry of ``instruments``."""
    registry = new_registry(instruments)
    fanout = Fanout(
        registry,
        clock=clock,
        book_depth=CAPTURE_DEPTH,
        metrics=metrics,
        metrics_interval=metrics_interval,
    )
    async with MarketServer(registry, fanout, limits=limits or ServerLimits(), auth=auth) as server:
        yield Market(Feed(registry), fanout, server)


async def send(ws: ClientConnection, **request: object) -> None:
    await ws.send(orjson.dumps(request).decode())


async def receive(ws: ClientConnection) -> Any:
    return orjson.loads(await within(ws.recv(), "a frame from the server"))


def ack(request_id: object, channel: str = "bbo", *keys: str, op: str = "subscribe") -> object:
    """The ``ack`` of a (un)subscribe; keys go in ``instruments`` (``symbols`` for nbbo)."""
    message: dict[str, object] = {"type": "ack", "id": request_id, "op": op, "channel": channel}
    if keys:
        message["symbols" if channel == "nbbo" else "instruments"] = list(keys)
    return message


def error(request_id: object, code: str, message: str) -> object:
    return {"type": "error", "id": request_id, "code": code, "message": message}


async def wait_until(
    condition: Callable[[], bool], *, what: str, turns: int = 10_000, pause: float = 0.001
) -> None:
    """Let the loop run until ``condition`` holds; fail (not hang) if it never does."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(pause)
    raise AssertionError(f"never happened: {what}")


def book_depths(fanout: Fanout, instrument: str) -> list[int]:
    """The distinct depths subscribed to ``instrument``'s book."""
    source = fanout.source(Channel.BOOK)
    assert isinstance(source, BookChannel)
    return source.depths(instrument)


def tracked_by_type() -> dict[str, int]:
    """How many objects the collector tracks, by type name, after a collection. A plain
    dict of str to int, which the collector does not track: taking a count adds nothing
    to the next one."""
    gc.collect()
    counts: dict[str, int] = {}
    for tracked in gc.get_objects():
        name = type(tracked).__qualname__
        counts[name] = counts.get(name, 0) + 1
    return counts


def tracked_growth(before: dict[str, int], *, at_least: int) -> dict[str, int]:
    """The types with at least ``at_least`` more tracked objects now than in ``before``,
    and how many more: what grew with a test's thousand of something, not the odd object
    the loop or the test runner made meanwhile."""
    now = tracked_by_type()
    growth = {name: count - before.get(name, 0) for name, count in now.items()}
    return {name: grown for name, grown in growth.items() if grown >= at_least}


class HandSink:
    """A sink that is always writable; enough for sessions driven by hand. ``writes``
    holds each write as it came, ``frames`` the messages of uncompressed ones."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    @property
    def frames(self) -> list[object]:
        return [orjson.loads(frame) for data in self.writes for frame in split_frames(data)]

    @property
    def writable(self) -> bool:
        return True

    def write_frames(self, frames: bytes) -> None:
        self.writes.append(frames)

    async def wait_writable(self) -> bool:
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        raise AssertionError("not closed in these tests")
