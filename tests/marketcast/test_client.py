"""The client against the real server on loopback: typed messages, subscriptions,
errors with their protocol codes, positions."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

import marketcast
from book.status import InstrumentState
from publish.auth import AuthPolicy, TokenAuthority
from publish.client import ServerLimits
from tests.publish.support import BTC, ETH, TS_SEND, running
from tests.publish.trading import OPENED_TS, trading
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


def bbo(seq: int, bid: tuple[str, str] | None, ask: tuple[str, str] | None) -> marketcast.Bbo:
    """What the stand-in feed's ``quote`` with these values must reach the client as."""
    return marketcast.Bbo(
        instrument=BTC,
        seq=seq,
        bid=None if bid is None else Decimal(bid[0]),
        bid_qty=None if bid is None else Decimal(bid[1]),
        ask=None if ask is None else Decimal(ask[0]),
        ask_qty=None if ask is None else Decimal(ask[1]),
        ts_event=seq * 1_000,
        ts_recv=seq * 1_000 + 7,
        ts_send=TS_SEND,
    )


async def next_message(client: marketcast.Client) -> marketcast.Message:
    async with asyncio.timeout(10):
        return await anext(client)


@pytest.mark.parametrize("batch", [True, False])
async def test_typed_messages_of_every_market_data_channel(batch: bool) -> None:
    async with running() as m:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.levels(BTC, [("100", "1"), ("99.5", "22.25")], [("101", "1.5")])
        async with marketcast.connect(m.server.url, batch=batch) as client:
            await client.subscribe("bbo", instruments=[BTC])
            first = await next_message(client)
            await client.subscribe("book", instruments=[BTC], depth=1)
            book = await next_message(client)
            await client.subscribe("status")
            statuses = {await next_message(client) for _ in range(3)}
            m.feed.quote(BTC, ("100.5", "0.00000001"), ("101", "2"))
            update = [await next_message(client) for _ in range(2)]
            await client.unsubscribe("book", instruments=[BTC])
            await client.unsubscribe("status")
            m.feed.quote(BTC, None, ("101", "2"))
            last = await next_message(client)
    assert first == bbo(1, ("100", "1"), ("101", "1.5"))
    assert book == marketcast.Book(
        BTC,
        1,
        1,
        (marketcast.Level(Decimal("100"), Decimal("1")),),
        (marketcast.Level(Decimal("101"), Decimal("1.5")),),
        1_000,
        1_007,
        TS_SEND,
    )
    assert statuses == {
        marketcast.Status(BTC, "live", "synced"),
        marketcast.Status(ETH, "syncing", "starting"),
        marketcast.Status("kraken:BTC-USD", "syncing", "starting"),
    }
    assert update[0] == bbo(2, ("100.5", "0.00000001"), ("101", "2"))
    assert isinstance(update[1], marketcast.Book) and update[1].seq == 2
    assert last == bbo(3, None, ("101", "2"))


async def test_refusals_raise_the_protocols_error_code() -> None:
    tokens = TokenAuthority(b"0123456789abcdef0123")
    async with running(auth=AuthPolicy(tokens=tokens, market_data_requires_auth=True)) as m:
        async with marketcast.connect(m.server.url) as client:
            with pytest.raises(marketcast.ServerError) as refused:
                await client.subscribe("bbo", instruments=[BTC])
            assert (refused.value.code, refused.value.message) == (
                "auth_required",
                "this server requires auth for market data",
            )
        with pytest.raises(marketcast.ServerError) as bad_token:
            async with marketcast.connect(m.server.url, token="not-a-token"):
                pass
        assert bad_token.value.code == "token_invalid"
        token = tokens.issue("acct-1", ttl=60)
        async with marketcast.connect(m.server.url, token=token) as client:
            with pytest.raises(marketcast.ServerError) as unknown:
                await client.subscribe("bbo", instruments=[BTC, "binance:NOPE-USDT"])
            await client.subscribe("bbo", instruments=[BTC])  # the connection is still fine
            await client.ping()
    assert unknown.value.code == "unknown_instrument"
    with pytest.raises(TypeError, match="the nbbo channel needs symbols="):
        await client.subscribe("nbbo", instruments=["BTC-USDT"])
    with pytest.raises(marketcast.ClientClosedError):
        await client.ping()


async def test_a_first_connection_that_fails_raises() -> None:
    async with running() as m:
        url = m.server.url
    with pytest.raises(OSError):
        async with marketcast.connect(url):
            pass


async def test_positions_are_returned_as_stored_and_refusals_carry_their_code(
    tmp_path: Path,
) -> None:
    async with trading(tmp_path / "positions.db") as desk:
        desk.feed.status(BTC, InstrumentState.LIVE)
        desk.feed.quote(BTC, ("43010", "1"), ("43011", "1"))
        token = desk.tokens.issue("acct-1", ttl=3600)
        async with marketcast.connect(desk.server.url, token=token) as client:
            opened = await client.open_position(
                "p-1", instrument=BTC, side="buy", qty=Decimal("0.5"), price="43000.1"
            )
            again = await client.open_position(
                "p-1", instrument=BTC, side="buy", qty="0.5", price=Decimal("43000.10")
            )
            await client.subscribe("profit", account="acct-1")
            marks = {type(message): message for message in [await next_message(client)]}
            marks |= {type(message): message for message in [await next_message(client)]}
            with pytest.raises(marketcast.ServerError) as duplicate:
                await client.open_position("p-1", instrument=BTC, side="sell", qty="1", price="1")
            with pytest.raises(marketcast.ServerError) as invalid:
                await client.open_position("p-2", instrument=BTC, side="long", qty="1", price="1")
            with pytest.raises(TypeError):
                await client.open_position(
                    "p-3",
                    instrument=BTC,
                    side="buy",
                    qty=0.5,  # type: ignore[arg-type]
                    price="1",
                )
            closed = await client.close_position("p-1")
            last = await next_message(client)
            with pytest.raises(marketcast.ServerError) as unknown:
                await client.close_position("p-1")
    position = marketcast.Position(
        "p-1", "acct-1", BTC, "buy", Decimal("0.5"), Decimal("43000.1"), OPENED_TS, None
    )
    assert opened == again == position
    assert (duplicate.value.code, invalid.value.code) == ("duplicate_position", "invalid_position")
    assert unknown.value.code == "unknown_position"
    assert closed.closed_ts is not None
    assert closed == replace(position, closed_ts=closed.closed_ts)
    assert marks[marketcast.Profit] == marketcast.Profit(
        "acct-1",
        "p-1",
        BTC,
        "buy",
        Decimal("0.5"),
        Decimal("43000.1"),
        Decimal("43010"),
        Decimal("4.95"),
        1,
        TS_SEND,
    )
    assert marks[marketcast.ProfitTotal] == marketcast.ProfitTotal(
        "acct-1", Decimal("4.95"), 1, 0, TS_SEND
    )
    assert last == marketcast.ProfitClosed("acct-1", "p-1", BTC, closed.closed_ts, TS_SEND)


async def test_a_consumer_that_falls_behind_gets_the_latest_per_key() -> None:
    async with running() as m:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.quote(BTC, ("1", "1"), ("2", "1"))
        async with marketcast.connect(m.server.url) as client:
            await client.subscribe("bbo", instruments=[BTC])
            for price in range(3, 100):
                m.feed.quote(BTC, ("1", "1"), (str(price), "1"))
                await asyncio.sleep(0.001)  # one publish tick each: every one is sent
            await eventually(lambda: received_seq(client, BTC) == 98, "the last update received")
            waiting = [await next_message(client) for _ in range(len(client._inbox))]
    assert waiting == [bbo(98, ("1", "1"), ("99", "1"))]


def received_seq(client: marketcast.Client, instrument: str) -> int | None:
    return client._inbox._last_seq.get(("bbo", instrument))


async def test_compressed_frames_and_a_ts_option_on_the_url_still_give_ns_integers() -> None:
    async with running() as m:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.quote(BTC, ("100", "1"), ("101", "1.5"))
        url = m.server.url + "?ts=iso&batch=0"
        async with marketcast.connect(url, compress=True) as client:
            await client.subscribe("bbo", instruments=[BTC])
            first = await next_message(client)
            assert client._ws is not None
            extensions = [extension.name for extension in client._ws.protocol.extensions]
    assert first == bbo(1, ("100", "1"), ("101", "1.5"))
    assert extensions == ["permessage-deflate"]


async def test_requests_refused_by_the_rate_limit_never_hang() -> None:
    # The server does not read a rate-limited request, so its error has no id: the
    # client answers its oldest waiting request with it.
    async with (
        running(ServerLimits(ops_per_second=0.01, ops_burst=3)) as m,
        marketcast.connect(m.server.url) as client,
        asyncio.timeout(10),
    ):
        results = await asyncio.gather(*(client.ping() for _ in range(8)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, marketcast.ServerError)]
    assert results.count(None) == 3
    assert [error.code for error in refused] == ["rate_limited"] * 5
