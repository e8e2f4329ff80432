"""Position ops over real websockets on loopback, against real storage: acks after commit,
validation codes, ids per account, retries, storage outages, reload on start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from book.fixed import parse_fixed
from publish.exceptions import RequestError
from publish.position import Position, PositionSide
from publish.protocol import ErrorCode
from publish.storage import SqliteBackend, StorageBackend, StorageHealth
from publish.storage.postgres import PostgresBackend
from tests.postgres import PG_DSN, fresh_schema
from tests.publish.storage.support import RecordingBackend, query
from tests.publish.support import error, receive, send
from tests.publish.trading import OPENED_TS, Desk, login, open_request, stored, trading
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    async with trading(tmp_path / "positions.db") as desk:
        yield desk


def position(position_id: str, account: str, opened_ts: int, **changes: Any) -> Position:
    values: dict[str, Any] = {
        "id": position_id,
        "account": account,
        "instrument": "binance:BTC-USDT",
        "side": PositionSide.BUY,
        "qty": parse_fixed("0.5"),
        "entry_price": parse_fixed("43000.1"),
        "opened_ts": opened_ts,
    }
    return Position(**{**values, **changes})


async def test_open_is_acked_after_commit_with_the_position_as_stored(
    desk: Desk, tmp_path: Path
) -> None:
    async with connect(desk.server.url) as ws:
        await login(ws, desk, "acct-1")
        await send(ws, **open_request(1, "p-1", side="sell", qty="0.000000000001", price="7"))
        ack = await receive(ws)
        # Acknowledged means committed: another connection sees the row already.
        in_db = query(tmp_path / "positions.db", "SELECT * FROM positions")
    assert ack == {
        "type": "ack",
        "id": 1,
        "op": "position.open",
        "position": stored(
            "p-1", "acct-1", OPENED_TS, side="sell", qty="0.000000000001", price="7"
        ),
    }
    assert in_db == [
        ("p-1", "acct-1", "binance:BTC-USDT", "sell", "0.000000000001", "7", OPENED_TS, None)
    ]


async def test_position_ops_and_profit_need_the_accounts_token(desk: Desk) -> None:
    async with connect(desk.server.url) as ws:
        await send(ws, **open_request(1, "p-1"))
        await send(ws, op="position.close", id=2, position_id="p-1")
        await send(ws, op="subscribe", id=3, channel="profit", account="acct-1")
        replies = [await receive(ws) for _ in range(3)]
        await login(ws, desk, "acct-1")
        await send(ws, op="subscribe", id=4, channel="profit", account="acct-2")
        replies.append(await receive(ws))
    required = "authenticate first (op auth, unexpired token)"
    assert replies == [
        error(1, "auth_required", required),
        error(2, "auth_required", required),
        error(3, "auth_required", required),
        error(4, "forbidden", "this connection acts for another account"),
    ]
    assert len(desk.book) == 0


def not_decimal(name: str, text: str) -> str:
    return f"{name} must be a decimal number (digits, optionally a point and digits), not {text!r}"


@pytest.mark.parametrize(
    ("position", "code", "message"),
    [
        (
            {"instrument": "binance:DOGE-USDT"},
            "unknown_instrument",
            "unknown instrument 'binance:DOGE-USDT'",
        ),
        ({"side": "long"}, "invalid_position", "side must be buy or sell, not 'long'"),
        ({"qty": "0"}, "invalid_position", "qty must be positive and below 10^18"),
        ({"qty": "-0.5"}, "invalid_position", not_decimal("qty", "-0.5")),
        ({"price": "1e18"}, "invalid_position", not_decimal("price", "1e18")),
        ({"price": "1" + "0" * 18}, "invalid_position", "price must be positive and below 10^18"),
        ({"qty": "0.0000000000001"}, "invalid_position", "qty has more than 12 decimal places"),
        ({"price": "NaN"}, "invalid_position", not_decimal("price", "NaN")),
        ({"price": "4 3"}, "invalid_position", not_decimal("price", "4 3")),
        ({"qty": "1_000"}, "invalid_position", not_decimal("qty", "1_000")),
        ({"qty": "\uff11"}, "invalid_position", not_decimal("qty", "\uff11")),
        ({"qty": "+1"}, "invalid_position", not_decimal("qty", "+1")),
        ({"id": ""}, "invalid_position", "position id must be 1 to 64 printable characters"),
        ({"id": "p" * 65}, "invalid_position", "position id must be 1 to 64 printable characters"),
        ({"id": "p\n1"}, "invalid_position", "position id must be 1 to 64 printable characters"),
        ({"qty": 0.5}, "bad_request", "position.qty must be a string"),
        ({"price": 43000}, "bad_request", "position.price must be a string"),
        ({"side": None}, "bad_request", "position.side must be a string"),
        # Several wrong: the first in the order id, instrument, side, qty, price.
        ({"price": 1, "qty": 2, "side": 3}, "bad_request", "position.side must be a string"),
        ({"price": 1, "id": 2}, "bad_request", "position.id must be a string"),
    ],
)
async def test_invalid_positions_are_refused_with_stable_codes(
    desk: Desk, position: dict[str, Any], code: str, message: str
) -> None:
    request = open_request(1, "p-1")
    request["position"].update(position)
    async with connect(desk.server.url) as ws:
        await login(ws, desk, "acct-1")
        await send(ws, **request)
        assert await receive(ws) == error(1, code, message)
        await send(ws, op="position.open", id=2, position=["p-1"])
        assert await receive(ws) == error(2, "bad_request", "position must be an object")
    assert len(desk.book) == 0


async def test_ids_are_per_account_and_the_same_open_again_is_a_retry(desk: Desk) -> None:
    async with connect(desk.server.url) as one, connect(desk.server.url) as two:
        await login(one, desk, "acct-1")
        await login(two, desk, "acct-2")
        # The same open twice at once, then again later: one position, acked three times.
        await send(one, **open_request(1, "p-1"))
        await send(one, **open_request(2, "p-1"))
        first = [await receive(one), await receive(one)]
        await send(one, **open_request(3, "p-1"))
        again = await receive(one)
        await send(one, **open_request(4, "p-1", qty="0.6"))
        different = await receive(one)
        await send(two, **open_request(5, "p-1", side="sell"))
        other_account = await receive(two)
    acked = stored("p-1", "acct-1", OPENED_TS)
    assert sorted(first, key=lambda reply: reply["id"]) == [
        {"type": "ack", "id": 1, "op": "position.open", "position": acked},
        {"type": "ack", "id": 2, "op": "position.open", "position": acked},
    ]
    assert again == {"type": "ack", "id": 3, "op": "position.open", "position": acked}
    assert different == error(
        4, "duplicate_position", "position id 'p-1' is already used by this account"
    )
    assert other_account["position"] == stored("p-1", "acct-2", OPENED_TS + 4, side="sell")
    assert desk.book.positions("acct-1") == [position("p-1", "acct-1", OPENED_TS)]


async def test_only_the_owner_closes_and_a_closed_id_stays_used(desk: Desk, tmp_path: Path) -> None:
    async with connect(desk.server.url) as one, connect(desk.server.url) as two:
        await login(one, desk, "acct-1")
        await login(two, desk, "acct-2")
        await send(one, **open_request(1, "p-1"))
        await receive(one)
        await send(two, op="position.close", id=2, position_id="p-1")
        not_yours = await receive(two)
        await send(one, op="position.close", id=3, position_id="p-1")
        closed = await receive(one)
        in_db = query(tmp_path / "positions.db", "SELECT id, closed_ts FROM positions")
        await send(one, op="position.close", id=4, position_id="p-1")
        twice = await receive(one)
        await send(one, **open_request(5, "p-1"))
        reused = await receive(one)
    assert not_yours == error(2, "unknown_position", "no open position 'p-1'")
    assert closed == {
        "type": "ack",
        "id": 3,
        "op": "position.close",
        "position": stored("p-1", "acct-1", OPENED_TS, closed_ts=OPENED_TS + 1),
    }
    assert in_db == [("p-1", OPENED_TS + 1)]
    assert twice == error(4, "unknown_position", "no open position 'p-1'")
    assert reused == error(
        5, "duplicate_position", "position id 'p-1' is already used by this account"
    )
    assert len(desk.book) == 0


async def test_an_account_holds_at_most_its_limit(tmp_path: Path) -> None:
    async with (
        trading(tmp_path / "limit.db", max_positions_per_account=2) as desk,
        connect(desk.server.url) as ws,
    ):
        await login(ws, desk, "acct-1")
        for request_id, position_id in enumerate(["p-1", "p-2", "p-3"]):
            await send(ws, **open_request(request_id, position_id))
        replies = [await receive(ws) for _ in range(3)]
    # Reserved ids count: the third is refused before the first two are committed.
    assert sorted(replies, key=lambda reply: reply["id"]) == [
        {
            "type": "ack",
            "id": 0,
            "op": "position.open",
            "position": stored("p-1", "acct-1", OPENED_TS),
        },
        {
            "type": "ack",
            "id": 1,
            "op": "position.open",
            "position": stored("p-2", "acct-1", OPENED_TS + 1),
        },
        error(2, "too_many_positions", "an account may hold at most 2 open positions"),
    ]


async def test_a_stalled_database_refuses_acks_keeps_the_change_and_acks_the_retry(
    tmp_path: Path,
) -> None:
    recording = RecordingBackend(SqliteBackend(tmp_path / "stall.db"))
    async with trading(tmp_path / "stall.db", backend=recording, ack_timeout=0.2) as desk:
        recording.gate.clear()  # writes hang from now on
        with pytest.raises(RequestError) as unconfirmed:
            await desk.book.open(
                "acct-1",
                position_id="p-1",
                instrument="binance:BTC-USDT",
                side="buy",
                qty="0.5",
                price="43000.1",
            )
        assert unconfirmed.value.code is ErrorCode.STORAGE_UNAVAILABLE
        assert unconfirmed.value.message == (
            "storage unavailable: the database did not confirm within 0.2s; the change is "
            "queued and will be stored when it answers: send the same request again for its "
            "acknowledgement"
        )
        with pytest.raises(RequestError) as pending:
            await desk.book.close("acct-1", "p-1")
        assert pending.value.code is ErrorCode.POSITION_PENDING
        recording.gate.set()
        retried = await desk.book.open(
            "acct-1",
            position_id="p-1",
            instrument="binance:BTC-USDT",
            side="buy",
            qty="0.5",
            price="43000.1",
        )
    assert retried == position("p-1", "acct-1", OPENED_TS)
    assert [batch.new_positions for batch in recording.committed] == [[retried]]


async def test_a_degraded_database_refuses_at_once_and_queues_nothing(tmp_path: Path) -> None:
    recording = RecordingBackend(SqliteBackend(tmp_path / "down.db"), fail_first=10**9)
    async with (
        trading(tmp_path / "down.db", backend=recording, ack_timeout=0.5) as desk,
        connect(desk.server.url) as ws,
    ):
        await login(ws, desk, "acct-1")
        await send(ws, **open_request(1, "p-1"))
        await eventually(lambda: desk.flusher.health is StorageHealth.DEGRADED, "degraded")
        first = await receive(ws)
        await send(ws, **open_request(2, "p-2"))
        refused = await receive(ws)
        pending_after = desk.flusher.pending_rows
        recording.fail_remaining = 0
        await eventually(lambda: desk.flusher.health is StorageHealth.HEALTHY, "recovered")
        await send(ws, **open_request(3, "p-1"))
        retried = await receive(ws)
    assert first == error(
        1,
        "storage_unavailable",
        "storage unavailable: the database did not confirm within 0.5s; the change is queued "
        "and will be stored when it answers: send the same request again for its "
        "acknowledgement",
    )
    assert refused == error(
        2,
        "storage_unavailable",
        "storage unavailable: the database is not accepting writes; nothing was changed",
    )
    assert pending_after == 1  # p-1 only: p-2 was never queued
    assert retried == {
        "type": "ack",
        "id": 3,
        "op": "position.open",
        "position": stored("p-1", "acct-1", OPENED_TS),
    }
    assert [batch.new_positions for batch in recording.committed] == [
        [position("p-1", "acct-1", OPENED_TS)]
    ]


@pytest.fixture(params=["sqlite", "postgres"])
async def backends(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[StorageBackend, StorageBackend]]:
    """Two backends on one database: before and after a restart."""
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "reload.db"), SqliteBackend(tmp_path / "reload.db")
        return
    async with fresh_schema() as schema:
        yield PostgresBackend(PG_DSN, schema=schema), PostgresBackend(PG_DSN, schema=schema)


async def test_open_positions_are_reloaded_on_start(
    tmp_path: Path, backends: tuple[StorageBackend, StorageBackend]
) -> None:
    before, after = backends
    async with trading(tmp_path / "unused.db", backend=before) as desk:
        for position_id in ("p-1", "p-2", "p-3"):
            await desk.book.open(
                "acct-1",
                position_id=position_id,
                instrument="binance:ETH-USDT",
                side="sell",
                qty="1.000000000001",
                price="2500.5",
            )
        await desk.book.close("acct-1", "p-2")
    async with trading(tmp_path / "unused.db", backend=after) as desk:
        reloaded = desk.book.positions("acct-1")
        async with connect(desk.server.url) as ws:
            await login(ws, desk, "acct-1")
            await send(ws, op="position.close", id=1, position_id="p-3")
            closed = await receive(ws)
            await send(ws, **open_request(2, "p-2"))
            reused = await receive(ws)
    short = {"instrument": "binance:ETH-USDT", "side": PositionSide.SELL}
    amounts = {"qty": parse_fixed("1.000000000001"), "entry_price": parse_fixed("2500.5")}
    assert reloaded == [
        position("p-1", "acct-1", OPENED_TS, **short, **amounts),
        position("p-3", "acct-1", OPENED_TS + 2, **short, **amounts),
    ]
    assert closed == {
        "type": "ack",
        "id": 1,
        "op": "position.close",
        "position": stored(
            "p-3",
            "acct-1",
            OPENED_TS + 2,
            instrument="binance:ETH-USDT",
            side="sell",
            qty="1.000000000001",
            price="2500.5",
            closed_ts=OPENED_TS,
        ),
    }
    assert reused == error(
        2, "duplicate_position", "position id 'p-2' is already used by this account"
    )
