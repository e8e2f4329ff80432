"""The simulated Bybit v5 public venue over real loopback websockets.

Frames are checked against the documented shapes, and a book kept by a client written
here (independently of feeds/bybit) is compared with the simulator's true book.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from book.fixed import parse_fixed
from feeds.bybit.adapter import BybitCategory
from feeds.simulator.bybit import BybitSimulator
from feeds.simulator.faults import Fault, FaultCounters
from feeds.simulator.market import SimSymbol

BTC = SimSymbol(
    "BTCUSDT",
    price="61800.00",
    tick="0.01",
    lot="0.000001",
    mean_qty="0.25",
    max_gap_ticks=40,
    price_decimals=2,
    qty_decimals=6,
)
ETH = SimSymbol(
    "ETHUSDT",
    price="2600.00",
    tick="0.01",
    lot="0.00001",
    mean_qty="3",
    price_decimals=2,
    qty_decimals=5,
)
CLOCK_MS = 1_672_304_484_978
MESSAGE_KEYS = ["topic", "type", "ts", "data", "cts"]
DATA_KEYS = ["s", "b", "a", "u", "seq"]
REPLY_KEYS = ["success", "ret_msg", "conn_id", "req_id", "op"]
PRICE = re.compile(r"^[0-9]+\.[0-9]{2}$")
SIZE = re.compile(r"^(0|[0-9]+\.[0-9]{6})$")
GUARD_SECONDS = 10  # fail instead of hanging if frames stop; never part of an assertion


def _simulator(category: BybitCategory = BybitCategory.SPOT) -> BybitSimulator:
    return BybitSimulator(
        category=category,
        symbols=(BTC, ETH),
        updates_per_second=1000,
        levels=80,
        seed=5,
        snapshot_every=0,
        clock_ns=lambda: CLOCK_MS * 1_000_000 + 123_456,
    )


@pytest.fixture
async def sim() -> AsyncIterator[BybitSimulator]:
    async with _simulator() as simulator:
        yield simulator


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(GUARD_SECONDS):
        message: dict[str, Any] = orjson.loads(await ws.recv())
        return message


async def _ask(ws: ClientConnection, **request: Any) -> dict[str, Any]:
    """Send a request; its reply, skipping topic messages."""
    await ws.send(orjson.dumps(request).decode())
    while True:
        message = await _recv(ws)
        if "op" in message:
            return message


async def _topic_messages(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while len(messages) < count:
        message = await _recv(ws)
        if "topic" in message:
            messages.append(message)
    return messages


class _ClientBook:
    """A book kept with Bybit's documented rules (written here, independently)."""

    def __init__(self) -> None:
        self.u = 0
        self.sides: tuple[dict[int, int], dict[int, int]] = ({}, {})

    def apply(self, message: dict[str, Any]) -> None:
        data = message["data"]
        if message["type"] == "snapshot" or data["u"] == 1:
            self.sides = ({}, {})
        else:
            assert data["u"] == self.u + 1, "gap in u"
        for side, levels in zip(self.sides, (data["b"], data["a"]), strict=True):
            for price, size in levels:
                if parse_fixed(size):
                    side[parse_fixed(price)] = parse_fixed(size)
                else:
                    side.pop(parse_fixed(price), None)
        self.u = data["u"]

    def levels(self) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        bids, asks = self.sides
        return tuple(sorted(bids.items(), reverse=True)), tuple(sorted(asks.items()))


@pytest.mark.parametrize(
    ("category", "ok_msg"), [(BybitCategory.SPOT, "subscribe"), (BybitCategory.LINEAR, "")]
)
async def test_subscribe_reply_snapshot_then_contiguous_deltas_rebuild_the_true_book(
    category: BybitCategory, ok_msg: str
) -> None:
    async with _simulator(category) as sim, connect(sim.ws_url + sim.path) as ws:
        reply = await _ask(ws, op="subscribe", args=["orderbook.50.BTCUSDT"], req_id="r1")
        messages = await _topic_messages(ws, 40)
        sim.pause()  # pushes what is pending; then nothing but replies
        await ws.send('{"op":"ping"}')
        while "op" not in (message := await _recv(ws)):
            messages.append(message)
        pong = message
    assert list(reply) == REPLY_KEYS and list(pong) == REPLY_KEYS
    assert reply == {
        "success": True,
        "ret_msg": ok_msg,
        "conn_id": reply["conn_id"],
        "req_id": "r1",
        "op": "subscribe",
    }
    assert pong == {
        "success": True,
        "ret_msg": "pong",
        "conn_id": reply["conn_id"],
        "req_id": "",
        "op": "ping",
    }
    book = _ClientBook()
    for message in messages:
        book.apply(message)
    assert all(list(m) == MESSAGE_KEYS and list(m["data"]) == DATA_KEYS for m in messages)
    assert [m["type"] for m in messages] == ["snapshot"] + ["delta"] * (len(messages) - 1)
    assert all(
        (m["ts"], m["cts"], m["data"]["s"]) == (CLOCK_MS, CLOCK_MS, "BTCUSDT") for m in messages
    )
    seqs = [m["data"]["seq"] for m in messages]
    assert seqs == sorted(set(seqs))
    assert len(messages[0]["data"]["b"]) == len(messages[0]["data"]["a"]) == 50
    levels = [level for m in messages for level in m["data"]["b"] + m["data"]["a"]]
    if category is BybitCategory.SPOT:
        assert all(PRICE.match(price) and SIZE.match(size) for price, size in levels)
    assert any(size == "0" for _, size in levels), "no level left the top 50"
    truth = sim.book("BTCUSDT", 50)
    assert book.levels() == (truth.bids, truth.asks)


async def test_level_1_sends_snapshots_only(sim: BybitSimulator) -> None:
    async with connect(sim.ws_url + sim.path) as ws:
        await _ask(ws, op="subscribe", args=["orderbook.1.ETHUSDT"])
        messages = await _topic_messages(ws, 5)
    assert {m["type"] for m in messages} == {"snapshot"}
    assert all(len(m["data"]["b"]) == len(m["data"]["a"]) == 1 for m in messages)
    u = [m["data"]["u"] for m in messages]
    assert u == list(range(u[0], u[0] + 5))


@pytest.mark.parametrize(
    ("request_", "ret_msg"),
    [
        (
            {"op": "subscribe", "args": ["orderbook.50.BTCUSDX"]},
            "Invalid symbol :[orderbook.50.BTCUSDX]",
        ),
        (
            {"op": "subscribe", "args": ["orderbook.25.BTCUSDT"]},
            "Invalid symbol :[orderbook.25.BTCUSDT]",
        ),
        (
            {"op": "subscribe", "args": "orderbook.50.BTCUSDT"},
            "error:args must be a list of topics",
        ),
        (
            {
                "op": "subscribe",
                "args": [
                    f"orderbook.{d}.{s}" for d in (1, 50, 200, 1000) for s in ("BTCUSDT", "ETHUSDT")
                ]
                + ["x"] * 3,
            },
            "error:args size >10",
        ),
        ({"op": "auth", "args": []}, "error:unknown op 'auth'"),
    ],
)
async def test_bad_requests_fail_and_subscribe_nothing(
    sim: BybitSimulator, request_: dict[str, Any], ret_msg: str
) -> None:
    async with connect(sim.ws_url + sim.path) as ws:
        reply = await _ask(ws, **request_)
        assert (reply["success"], reply["ret_msg"], reply["op"]) == (False, ret_msg, request_["op"])
        await ws.send("not json")
        assert (await _recv(ws))["ret_msg"] == "error:request must be a JSON object"
    assert sim.subscribers("orderbook.50.BTCUSDT") == 0


async def test_linear_takes_more_than_ten_topics_and_refuses_a_second_subscription() -> None:
    topics = [f"orderbook.{d}.{s}" for d in (1, 50, 200, 1000) for s in ("BTCUSDT", "ETHUSDT")]
    async with _simulator(BybitCategory.LINEAR) as sim, connect(sim.ws_url + sim.path) as ws:
        assert (await _ask(ws, op="subscribe", args=topics + topics[:3]))["success"] is True
        again = await _ask(ws, op="subscribe", args=["orderbook.50.ETHUSDT"])
        assert (again["success"], again["ret_msg"]) == (
            False,
            "error:already subscribed,topic:orderbook.50.ETHUSDT",
        )
        assert (await _ask(ws, op="unsubscribe", args=["orderbook.50.ETHUSDT"]))["success"]
        assert [sim.subscribers(t) for t in topics] == [1, 1, 1, 0, 1, 1, 1, 1]


async def test_other_paths_are_not_found(sim: BybitSimulator) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(sim.ws_url + "/v5/public/linear"):
            pass
    assert refused.value.response.status_code == 404


async def test_faults_on_the_wire(sim: BybitSimulator) -> None:
    async with connect(sim.ws_url + sim.path) as ws:
        await _ask(ws, op="subscribe", args=["orderbook.50.BTCUSDT"])
        (first,) = await _topic_messages(ws, 1)
        sim.inject(Fault.DROP)
        dropped = await _topic_messages(ws, 3)
        sim.restart("BTCUSDT")
        while (restarted := (await _topic_messages(ws, 1))[0])["data"]["u"] != 1:
            pass
        after_restart = await _topic_messages(ws, 1)
        sim.resend_snapshot("BTCUSDT")
        while (resent := (await _topic_messages(ws, 1))[0])["type"] != "snapshot":
            pass
        sim.send_malformed()
        sim.send_error()
        others: list[str | bytes] = []
        while len(others) < 2:
            async with asyncio.timeout(GUARD_SECONDS):
                frame = await ws.recv()
            try:
                if "success" in orjson.loads(frame):
                    others.append(frame)
            except orjson.JSONDecodeError:
                others.append(frame)
        sim.disconnect_all()
        with pytest.raises(ConnectionClosed):
            while True:
                await _recv(ws)
    u = [first["data"]["u"]] + [m["data"]["u"] for m in dropped]
    steps = [b - a for a, b in zip(u, u[1:], strict=False)]
    assert sorted(set(steps)) == [1, 2] and steps.count(2) == 1  # one message lost
    assert restarted["type"] == "snapshot" and len(restarted["data"]["b"]) == 50
    assert (after_restart[0]["type"], after_restart[0]["data"]["u"]) == ("delta", 2)
    assert resent["data"]["u"] > 2
    assert others[0] == '{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":16723044849'
    error = orjson.loads(others[1])
    assert (error["success"], error["ret_msg"]) == (False, "error:internal server error")
    assert sim.faults == FaultCounters(
        dropped=1, restarts=1, unsolicited_snapshots=1, disconnected=1, malformed=1, errors=1
    )
