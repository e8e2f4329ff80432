"""The book, nbbo and metrics channels (and all channels in one batch) over loopback.

Every test drives the real registry as a feed does and reads with a real websockets
client; each expected frame is written out whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from book.status import InstrumentState
from publish.protocol import Channel
from tests.publish.support import (
    BTC,
    CAPTURE_DEPTH,
    ETH,
    TS_SEND,
    ack,
    bbo,
    book_depths,
    error,
    receive,
    running,
    send,
)

KRAKEN_BTC_USDT = "kraken:BTC-USDT"
TWO_VENUES = (BTC, ETH, KRAKEN_BTC_USDT)

Side = Sequence[tuple[str, str]]
BIDS: Side = [("100", "1"), ("99.5", "2"), ("99", "3"), ("98", "4")]
ASKS: Side = [("101", "1.5"), ("101.25", "2.5"), ("102", "3.5")]


def book(instrument: str, seq: int, depth: int, bids: Side, asks: Side) -> dict[str, object]:
    """The exact ``book`` wire object for a ``Feed.levels`` publish with these levels."""
    return {
        "type": "book",
        "instrument": instrument,
        "seq": seq,
        "depth": depth,
        "bids": [list(level) for level in bids[:depth]],
        "asks": [list(level) for level in asks[:depth]],
        "ts_event": seq * 1_000,
        "ts_recv": seq * 1_000 + 7,
        "ts_send": TS_SEND,
    }


def book_ack(request_id: int, depth: int, *instruments: str) -> dict[str, object]:
    return {
        "type": "ack",
        "id": request_id,
        "op": "subscribe",
        "channel": "book",
        "instruments": list(instruments),
        "depth": depth,
    }


async def pong_after(ws: ClientConnection, request_id: int) -> list[Any]:
    """Everything received up to the pong of a ping sent now: a barrier that proves what
    the server did NOT send before it."""
    await send(ws, op="ping", id=request_id)
    received = []
    while (message := await receive(ws)) != {"type": "pong", "id": request_id}:
        received.append(message)
    return received


async def test_book_sends_top_n_on_subscribe_and_only_when_those_levels_change() -> None:
    async with running() as m, connect(m.server.url) as shallow, connect(m.server.url) as deep:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.levels(BTC, BIDS, ASKS)
        await send(shallow, op="subscribe", id=1, channel="book", instruments=[BTC], depth=2)
        await send(deep, op="subscribe", id=1, channel="book", instruments=[BTC], depth=3)
        assert [await receive(shallow), await receive(shallow)] == [
            book_ack(1, 2, BTC),
            book(BTC, 1, 2, BIDS, ASKS),
        ]
        assert [await receive(deep), await receive(deep)] == [
            book_ack(1, 3, BTC),
            book(BTC, 1, 3, BIDS, ASKS),
        ]
        # The third bid changes: only the depth-3 subscriber is told.
        third = [*BIDS[:2], ("99", "7"), *BIDS[3:]]
        m.feed.levels(BTC, third, ASKS)
        assert await receive(deep) == book(BTC, 2, 3, third, ASKS)
        assert await pong_after(shallow, 2) == []
        # The fourth bid changes: below both depths, nobody is told.
        fourth = [*third[:3], ("97", "1")]
        m.feed.levels(BTC, fourth, ASKS)
        assert await pong_after(deep, 3) == []
        assert await pong_after(shallow, 4) == []
        # The best ask changes: both, each at its depth; seq jumps over unsent versions.
        asks = [("100.5", "9"), *ASKS[1:]]
        m.feed.levels(BTC, fourth, asks)
        assert await receive(shallow) == book(BTC, 4, 2, fourth, asks)
        assert await receive(deep) == book(BTC, 4, 3, fourth, asks)
        assert book_depths(m.fanout, BTC) == [2, 3]


async def test_book_depth_defaults_is_bounded_and_a_resubscribe_moves_it() -> None:
    async with running() as m, connect(m.server.url) as ws:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.levels(BTC, BIDS, ASKS)
        await send(ws, op="subscribe", id=1, channel="book", instruments=[BTC])
        default = min(10, CAPTURE_DEPTH)
        assert [await receive(ws), await receive(ws)] == [
            book_ack(1, default, BTC),
            book(BTC, 1, default, BIDS, ASKS),
        ]
        for request_id, depth in ((2, 0), (3, CAPTURE_DEPTH + 1), (4, -1)):
            await send(
                ws, op="subscribe", id=request_id, channel="book", instruments=[BTC], depth=depth
            )
            assert await receive(ws) == error(
                request_id, "bad_request", f"depth must be between 1 and {CAPTURE_DEPTH}"
            )
        for request_id, depth in ((5, "3"), (6, 2.0), (7, True)):
            await send(
                ws, op="subscribe", id=request_id, channel="book", instruments=[BTC], depth=depth
            )
            assert await receive(ws) == error(request_id, "bad_request", "depth must be an integer")
        await send(ws, op="subscribe", id=8, channel="book", instruments=[BTC], depth=1)
        assert [await receive(ws), await receive(ws)] == [
            book_ack(8, 1, BTC),
            book(BTC, 1, 1, BIDS, ASKS),
        ]
        assert book_depths(m.fanout, BTC) == [1]
        m.feed.levels(BTC, BIDS[:1], ASKS[:1])  # deeper levels vanish: not a depth-1 change
        m.feed.levels(BTC, BIDS, [("100.9", "1")])
        assert await receive(ws) == book(BTC, 3, 1, BIDS, [("100.9", "1")])
        await send(ws, op="unsubscribe", id=9, channel="book", instruments=[BTC])
        assert await receive(ws) == ack(9, "book", BTC, op="unsubscribe")
        m.feed.levels(BTC, ASKS, BIDS[:0])
        assert await pong_after(ws, 10) == []
        assert book_depths(m.fanout, BTC) == []
        assert m.fanout.subscriber_count((Channel.BOOK, BTC)) == 0


async def test_book_of_a_syncing_instrument_starts_with_its_first_change() -> None:
    async with running() as m, connect(m.server.url) as ws:
        m.feed.levels(ETH, BIDS, ASKS)  # syncing: nothing on subscribe
        await send(ws, op="subscribe", id=1, channel="book", instruments=[ETH], depth=2)
        assert await receive(ws) == book_ack(1, 2, ETH)
        m.feed.levels(ETH, BIDS, ASKS)  # same levels, but the first the client sees
        assert await receive(ws) == book(ETH, 2, 2, BIDS, ASKS)


def market(bid: str | None, ask: str | None) -> str:
    if bid is None or ask is None or Decimal(bid) < Decimal(ask):
        return "normal"
    return "locked" if Decimal(bid) == Decimal(ask) else "crossed"


def nbbo(
    seq: int,
    bid: tuple[str, str, str] | None,
    ask: tuple[str, str, str] | None,
    ts_seq: int,
) -> dict[str, object]:
    """The exact ``nbbo`` object; sides are (price, qty, venue); ``ts_seq`` is the seq of
    the venue snapshot received last (its timestamps are the NBBO's)."""
    return {
        "type": "nbbo",
        "symbol": "BTC-USDT",
        "seq": seq,
        "bid": bid and bid[0],
        "bid_qty": bid and bid[1],
        "bid_venue": bid and bid[2],
        "ask": ask and ask[0],
        "ask_qty": ask and ask[1],
        "ask_venue": ask and ask[2],
        "market": market(bid and bid[0], ask and ask[0]),
        "ts_event": ts_seq * 1_000,
        "ts_recv": ts_seq * 1_000 + 7,
        "ts_send": TS_SEND,
    }


async def test_nbbo_consolidates_live_venues_with_the_venue_of_each_side() -> None:
    async with running(instruments=TWO_VENUES) as m, connect(m.server.url) as ws:
        for instrument in (BTC, KRAKEN_BTC_USDT):
            m.feed.status(instrument, InstrumentState.LIVE)
        m.feed.quote(BTC, ("100", "1"), ("102", "1"))
        m.feed.quote(KRAKEN_BTC_USDT, ("100.5", "2"), ("103", "4"))
        await send(ws, op="subscribe", id=1, channel="nbbo", symbols=["BTC-USDT"])
        assert [await receive(ws), await receive(ws)] == [
            ack(1, "nbbo", "BTC-USDT"),
            nbbo(2, ("100.5", "2", "kraken"), ("102", "1", "binance"), 1),
        ]
        m.feed.quote(BTC, ("101", "3"), ("102", "1"))
        assert await receive(ws) == nbbo(3, ("101", "3", "binance"), ("102", "1", "binance"), 2)
        m.feed.status(BTC, InstrumentState.STALE, "gap")  # a stale venue leaves the NBBO
        assert await receive(ws) == nbbo(4, ("100.5", "2", "kraken"), ("103", "4", "kraken"), 1)
        m.feed.quote(ETH, ("1", "1"), ("2", "1"))  # another symbol: nothing
        assert await pong_after(ws, 2) == []
        await send(ws, op="subscribe", id=3, channel="nbbo", symbols=["BTC-USDT", "DOGE-USDT"])
        assert await receive(ws) == error(3, "unknown_symbol", "unknown symbol(s): DOGE-USDT")
        await send(ws, op="subscribe", id=4, channel="nbbo", instruments=["BTC-USDT"])
        assert await receive(ws) == error(
            4, "bad_request", "symbols must be a non-empty list of strings"
        )
        await send(ws, op="unsubscribe", id=5, channel="nbbo", symbols=["BTC-USDT"])
        assert await receive(ws) == ack(5, "nbbo", "BTC-USDT", op="unsubscribe")
        m.feed.quote(KRAKEN_BTC_USDT, ("99", "2"), ("103", "4"))
        assert await pong_after(ws, 6) == []


async def test_nbbo_of_a_symbol_nobody_quotes_yet_starts_with_its_first_quote() -> None:
    async with running(instruments=TWO_VENUES) as m, connect(m.server.url) as ws:
        await send(ws, op="subscribe", id=1, channel="nbbo", symbols=["BTC-USDT"])
        assert await receive(ws) == ack(1, "nbbo", "BTC-USDT")
        m.feed.status(KRAKEN_BTC_USDT, InstrumentState.LIVE)
        m.feed.quote(KRAKEN_BTC_USDT, None, ("103", "4"))
        assert await receive(ws) == nbbo(1, None, ("103", "4", "kraken"), 1)


async def test_metrics_channel_sends_now_then_every_interval_until_unsubscribed() -> None:
    calls: list[int] = []

    def provider() -> dict[str, object]:
        calls.append(len(calls))
        return {"call": len(calls), "nested": {"clients": m.fanout.counters.clients}}

    async with running(metrics=provider, metrics_interval=0.01) as m, connect(m.server.url) as ws:
        await send(ws, op="subscribe", id=1, channel="metrics")
        received = [await receive(ws) for _ in range(4)]
        assert received == [
            ack(1, "metrics"),
            *(
                {"type": "metrics", "call": n, "nested": {"clients": 1}, "ts_send": TS_SEND}
                for n in (1, 2, 3)
            ),
        ]
        await send(ws, op="unsubscribe", id=2, channel="metrics")
        while (message := await receive(ws))["type"] == "metrics":
            pass
        assert message == ack(2, "metrics", op="unsubscribe")
        made = len(calls)
        await asyncio.sleep(0.05)  # five intervals: a running timer would have fired
        assert await pong_after(ws, 3) == []
        assert len(calls) == made


async def test_default_metrics_are_the_engine_counters() -> None:
    async with running() as m, connect(m.server.url) as ws:
        await send(ws, op="subscribe", id=1, channel="metrics")
        assert await receive(ws) == ack(1, "metrics")
        metrics = await receive(ws)
    # Taken at the subscribe: the ack not yet written, no tick run yet.
    assert metrics == {"type": "metrics", **m.fanout.stats(), "ts_send": TS_SEND} | {
        "messages_sent": 0,
        "frames_sent": 0,
        "messages_encoded": 0,
        "ticks": 0,
        "clients": 1,
        "subscriptions": 1,
        "crowds": 1,
    }


@pytest.mark.parametrize("batch", [False, True])
async def test_every_channel_in_one_tick_and_seq_only_grows_per_key(batch: bool) -> None:
    url_suffix = "?batch=1" if batch else ""
    async with running(instruments=TWO_VENUES) as m, connect(m.server.url + url_suffix) as ws:
        for instrument in TWO_VENUES:
            m.feed.status(instrument, InstrumentState.LIVE)
        requests = [
            {"channel": "bbo", "instruments": list(TWO_VENUES)},
            {"channel": "book", "instruments": [BTC], "depth": 2},
            {"channel": "nbbo", "symbols": ["BTC-USDT"]},
            {"channel": "status"},
        ]
        for request_id, request in enumerate(requests, start=1):
            await send(ws, op="subscribe", id=request_id, **request)
        assert await until_pong(ws, batch) == [
            ack(1, "bbo", *TWO_VENUES),
            {**ack(2, "book", BTC), "depth": 2},
            ack(3, "nbbo", "BTC-USDT"),
            ack(4, "status"),
            *(
                {"type": "status", "instrument": instrument, "state": "live", "reason": "synced"}
                for instrument in sorted(TWO_VENUES)
            ),
        ]
        # One tick: a BTC change moves bbo, book and nbbo; ETH moves its bbo.
        m.feed.levels(BTC, BIDS, ASKS)
        m.feed.quote(ETH, ("5", "1"), ("6", "1"))
        tick = await receive(ws) if batch else [await receive(ws) for _ in range(4)]
        assert tick == [
            bbo(BTC, 1, BIDS[0], ASKS[0]),
            bbo(ETH, 1, ("5", "1"), ("6", "1")),
            book(BTC, 1, 2, BIDS, ASKS),
            nbbo(1, (*BIDS[0], "binance"), (*ASKS[0], "binance"), 1),
        ]
        # Many changes over many ticks: per key, seq strictly grows and the last is current.
        last: dict[tuple[str, str], int] = {}
        for step in range(60):
            instrument = TWO_VENUES[step % 3]
            m.feed.quote(instrument, (str(100 + step), "1"), (str(200 + step), "1"))
            if step % 7 == 0:
                await asyncio.sleep(0)
        for message in await until_pong(ws, batch):
            key = (message["type"], message.get("instrument") or message["symbol"])
            assert message["seq"] > last.get(key, 0), message
            last[key] = message["seq"]
        assert last == {
            ("bbo", BTC): 21,
            ("bbo", ETH): 21,
            ("bbo", KRAKEN_BTC_USDT): 20,
            ("book", BTC): 21,
            ("nbbo", "BTC-USDT"): last["nbbo", "BTC-USDT"],
        }
        current = m.fanout.registry.nbbo("BTC-USDT")
        assert current is not None and last["nbbo", "BTC-USDT"] == current.seq


async def until_pong(ws: ClientConnection, batch: bool) -> list[Any]:
    """Every message up to the pong of a ping sent now (in batch mode: up to the end of
    the pong's frame, since replies go ahead of market data queued in the same tick)."""
    pong = {"type": "pong", "id": "barrier"}
    await send(ws, op="ping", id="barrier")
    messages: list[Any] = []
    while True:
        frame = await receive(ws)
        if not batch:
            if frame == pong:
                return messages
            messages.append(frame)
        elif pong in frame:
            return messages + [message for message in frame if message != pong]
        else:
            messages.extend(frame)
