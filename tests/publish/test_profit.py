"""The profit stream over real websockets on loopback: exact PnL for long and short on
known BBO sequences, one mark per position per tick under bursts, accounts isolated,
close ends a position's frames, profit resumes after a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from book.status import InstrumentState
from publish.profit import format_pnl
from tests.publish.support import BTC, ETH, TS_SEND, receive, send
from tests.publish.trading import OPENED_TS, Desk, login, open_request, stored, trading

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    async with trading(tmp_path / "profit.db") as desk:
        for instrument in (BTC, ETH):
            desk.feed.status(instrument, InstrumentState.LIVE)
        yield desk


def profit(
    position_id: str,
    mark: str | None,
    pnl: str | None,
    seq: int,
    *,
    side: str = "buy",
    qty: str = "0.5",
    entry: str = "43000.1",
    instrument: str = BTC,
    account: str = "acct-1",
) -> dict[str, Any]:
    return {
        "type": "profit",
        "account": account,
        "position_id": position_id,
        "instrument": instrument,
        "side": side,
        "qty": qty,
        "entry": entry,
        "mark": mark,
        "pnl": pnl,
        "seq": seq,
        "ts_send": TS_SEND,
    }


def total(pnl: str, positions: int, unmarked: int = 0, account: str = "acct-1") -> dict[str, Any]:
    return {
        "type": "profit_total",
        "account": account,
        "pnl": pnl,
        "positions": positions,
        "unmarked": unmarked,
        "ts_send": TS_SEND,
    }


async def one_tick(ws: ClientConnection) -> list[dict[str, Any]]:
    """The profit frames of one tick: everything up to and including its total."""
    frames = [await receive(ws)]
    while frames[-1]["type"] != "profit_total":
        frames.append(await receive(ws))
    return frames


async def until(ws: ClientConnection, *types: str) -> list[dict[str, Any]]:
    """Frames up to the first one of each of ``types`` (in whatever order they come)."""
    frames: list[dict[str, Any]] = []
    missing = set(types)
    while missing:
        frames.append(await receive(ws))
        missing.discard(frames[-1]["type"])
    return frames


async def nothing_more(ws: ClientConnection) -> None:
    """Nothing is pending: a ping sent now is answered before anything else arrives."""
    await send(ws, op="ping", id="sync")
    assert await receive(ws) == {"type": "pong", "id": "sync"}


async def open_positions(ws: ClientConnection, *requests: dict[str, Any]) -> None:
    for request in requests:
        await send(ws, **request)
        reply = await receive(ws)
        assert (reply["type"], reply["id"]) == ("ack", request["id"]), reply


async def test_pnl_is_exact_for_long_and_short_on_a_known_bbo_sequence(desk: Desk) -> None:
    desk.feed.quote(BTC, ("43000.1", "1"), ("43000.2", "1"))
    async with connect(desk.server.url) as ws:
        await login(ws, desk, "acct-1")
        await open_positions(
            ws,
            open_request(1, "long"),
            open_request(2, "short", side="sell", qty="0.000000000001", price="43010"),
        )
        await send(ws, op="subscribe", id=3, channel="profit", account="acct-1")
        assert await receive(ws) == {
            "type": "ack",
            "id": 3,
            "op": "subscribe",
            "channel": "profit",
            "account": "acct-1",
        }
        current = await one_tick(ws)

        short = {"side": "sell", "qty": "0.000000000001", "entry": "43010"}
        steps: list[tuple[tuple[str, str] | None, tuple[str, str] | None]] = [
            (("43010", "1"), ("43010.5", "2")),  # both sides move
            (("43010", "1"), ("43011", "2")),  # only the ask: only the short moves
            (("43005", "1"), None),  # the ask side empties: the short has no mark
            (("43005", "9"), None),  # a quantity alone moves no PnL: nothing sent
            (("42999.999999999999", "1"), ("43010", "1")),
        ]
        ticks = []
        for bid, ask in steps:
            desk.feed.quote(BTC, bid, ask)
            if bid == ("43005", "9"):
                await nothing_more(ws)
                continue
            ticks.append(await one_tick(ws))
        await nothing_more(ws)

    assert current == [
        profit("long", "43000.1", "0", 1),
        profit("short", "43000.2", "0.0000000000098", 1, **short),
        total("0.0000000000098", 2),
    ]
    assert ticks == [
        [
            profit("long", "43010", "4.95", 2),
            profit("short", "43010.5", "-0.0000000000005", 2, **short),
            total("4.9499999999995", 2),
        ],
        [
            profit("short", "43011", "-0.000000000001", 3, **short),
            total("4.949999999999", 2),
        ],
        [
            profit("long", "43005", "2.45", 4),
            profit("short", None, None, 4, **short),
            total("2.45", 2, unmarked=1),
        ],
        [
            # 0.5 * (42999.999999999999 - 43000.1) and 1e-12 * (43010 - 43010)
            profit("long", "42999.999999999999", "-0.0500000000005", 6),
            profit("short", "43010", "0", 6, **short),
            total("-0.0500000000005", 2),
        ],
    ]


async def test_a_burst_of_changes_between_ticks_is_one_mark_per_position(desk: Desk) -> None:
    desk.feed.quote(BTC, ("43000", "1"), ("43001", "1"))
    async with connect(desk.server.url) as ws:
        await login(ws, desk, "acct-1")
        await open_positions(ws, open_request(1, "p-1"), open_request(2, "p-2", side="sell"))
        await send(ws, op="subscribe", id=3, channel="profit", account="acct-1")
        await receive(ws)
        await one_tick(ws)
        encoded = desk.fanout.counters.messages_encoded
        # 200 price changes in one loop iteration: the feed applied them all before the tick.
        for step in range(1, 201):
            desk.feed.quote(BTC, (f"{43000 + step}", "1"), (f"{43001 + step}", "1"))
        burst = await one_tick(ws)
        await nothing_more(ws)
        encoded = desk.fanout.counters.messages_encoded - encoded
    assert burst == [
        profit("p-1", "43200", "99.95", 201),
        profit("p-2", "43201", "-100.45", 201, side="sell"),
        total("-0.5", 2),
    ]
    assert encoded == 3


async def test_an_account_sees_only_its_own_positions(desk: Desk) -> None:
    desk.feed.quote(BTC, ("43000", "1"), ("43001", "1"))
    async with (
        connect(desk.server.url) as one,
        connect(desk.server.url) as one_again,
        connect(desk.server.url) as two,
    ):
        for ws, account in ((one, "acct-1"), (one_again, "acct-1"), (two, "acct-2")):
            await login(ws, desk, account)
        await open_positions(one, open_request(1, "p-1"))
        await open_positions(two, open_request(1, "p-1", side="sell", qty="2"))
        for ws, account in ((one, "acct-1"), (one_again, "acct-1"), (two, "acct-2")):
            await send(ws, op="subscribe", id=2, channel="profit", account=account)
            await receive(ws)
            await one_tick(ws)
        desk.feed.quote(BTC, ("43100", "1"), ("43101", "1"))
        seen = [await one_tick(ws) for ws in (one, one_again, two)]
        for ws in (one, one_again, two):
            await nothing_more(ws)
    mine = [profit("p-1", "43100", "49.95", 2), total("49.95", 1)]
    theirs = [
        profit("p-1", "43101", "-201.8", 2, side="sell", qty="2", account="acct-2"),
        total("-201.8", 1, account="acct-2"),
    ]
    assert seen == [mine, mine, theirs]


async def test_close_ends_a_positions_frames_and_unsubscribe_ends_all(desk: Desk) -> None:
    desk.feed.quote(BTC, ("43000", "1"), ("43001", "1"))
    async with connect(desk.server.url) as ws:
        await login(ws, desk, "acct-1")
        await open_positions(ws, open_request(1, "p-1"), open_request(2, "p-2", qty="1"))
        await send(ws, op="subscribe", id=3, channel="profit", account="acct-1")
        await receive(ws)
        await one_tick(ws)
        await send(ws, op="position.close", id=4, position_id="p-1")
        closing = await until(ws, "ack", "profit_total")
        desk.feed.quote(BTC, ("43050", "1"), ("43051", "1"))
        after = await one_tick(ws)
        await send(ws, op="unsubscribe", id=5, channel="profit", account="acct-1")
        unsubscribed = await receive(ws)
        desk.feed.quote(BTC, ("43060", "1"), ("43061", "1"))
        await nothing_more(ws)
    # The close's ack comes first, then its profit_closed frame, then the total.
    ack = closing[0]
    assert closing == [
        {
            "type": "ack",
            "id": 4,
            "op": "position.close",
            "position": stored("p-1", "acct-1", OPENED_TS, closed_ts=OPENED_TS + 2),
        },
        {
            "type": "profit_closed",
            "account": "acct-1",
            "position_id": "p-1",
            "instrument": BTC,
            "closed_ts": OPENED_TS + 2,
            "ts_send": TS_SEND,
        },
        total("-0.1", 1),
    ]
    assert ack["position"]["closed_ts"] == OPENED_TS + 2
    assert after == [profit("p-2", "43050", "49.9", 2, qty="1"), total("49.9", 1)]
    assert unsubscribed == {
        "type": "ack",
        "id": 5,
        "op": "unsubscribe",
        "channel": "profit",
        "account": "acct-1",
    }
    assert desk.engine.watched_positions == 0


async def test_a_position_opened_while_subscribed_starts_at_the_current_mark(desk: Desk) -> None:
    desk.feed.quote(ETH, ("2500", "1"), ("2500.5", "1"))
    async with connect(desk.server.url) as ws:
        await login(ws, desk, "acct-1")
        await send(ws, op="subscribe", id=1, channel="profit", account="acct-1")
        await receive(ws)
        assert await one_tick(ws) == [total("0", 0)]
        await send(ws, **open_request(2, "p-1", side="sell", qty="3", price="2510", instrument=ETH))
        frames = await until(ws, "ack", "profit_total")
    # The ack comes before the position's first profit frame: a client never sees profit
    # on a position it does not know to be durable.
    assert frames == [
        {
            "type": "ack",
            "id": 2,
            "op": "position.open",
            "position": {
                "id": "p-1",
                "account": "acct-1",
                "instrument": ETH,
                "side": "sell",
                "qty": "3",
                "price": "2510",
                "opened_ts": OPENED_TS,
                "closed_ts": None,
            },
        },
        profit("p-1", "2500.5", "28.5", 1, side="sell", qty="3", entry="2510", instrument=ETH),
        total("28.5", 1),
    ]


async def test_profit_resumes_for_positions_reloaded_on_start(tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    async with trading(db) as desk, connect(desk.server.url) as ws:
        await login(ws, desk, "acct-1")
        await open_positions(ws, open_request(1, "p-1", qty="0.25", price="43000"))
    async with trading(db) as desk, connect(desk.server.url) as ws:
        desk.feed.status(BTC, InstrumentState.LIVE)
        desk.feed.quote(BTC, ("43100.01", "1"), ("43100.02", "1"))
        await login(ws, desk, "acct-1")
        await send(ws, op="subscribe", id=1, channel="profit", account="acct-1")
        await receive(ws)
        resumed = await one_tick(ws)
        desk.feed.quote(BTC, ("43200", "1"), ("43200.5", "1"))
        moved = await one_tick(ws)
    assert resumed == [
        profit("p-1", "43100.01", "25.0025", 1, qty="0.25", entry="43000"),
        total("25.0025", 1),
    ]
    assert moved == [profit("p-1", "43200", "50", 2, qty="0.25", entry="43000"), total("50", 1)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (10**24, "1"),
        (-(10**24) // 2, "-0.5"),
        (1, "0.000000000000000000000001"),
        (-1, "-0.000000000000000000000001"),
        (123 * 10**24 + 45 * 10**21, "123.045"),
    ],
)
def test_format_pnl_is_the_shortest_exact_decimal(value: int, text: str) -> None:
    assert format_pnl(value) == text
