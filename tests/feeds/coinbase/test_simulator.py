"""The simulated Coinbase Advanced Trade venue over real loopback websockets.

Frames are checked against the documented shapes, and a book kept by a client written
here (independently of feeds/coinbase) is compared with the simulator's true book.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from book.fixed import parse_fixed
from feeds.simulator.coinbase import CoinbaseSimulator
from feeds.simulator.faults import Fault, FaultCounters
from feeds.simulator.market import SimSymbol
from tests.waiting import eventually

BTC = SimSymbol(
    "BTC-USD",
    price="61800.00",
    tick="0.01",
    lot="0.00000001",
    mean_qty="0.25",
    max_gap_ticks=40,
    price_decimals=2,
)
ETH = SimSymbol("ETH-USD", price="2600.00", tick="0.01", lot="0.00000001", mean_qty="3")
CLOCK_NS = 1_675_974_770_714_964_855
TIMESTAMP = "2023-02-09T20:32:50.714964855Z"
ENVELOPE_KEYS = ["channel", "client_id", "timestamp", "sequence_num", "events"]
UPDATE_KEYS = ["side", "event_time", "price_level", "new_quantity"]
GUARD_SECONDS = 10  # fail instead of hanging if frames stop; never part of an assertion


IMPATIENT_SECONDS = 1.0
"""The subscribe timeout of the venue in tests of what it closes: short, yet a loaded
machine's stall between connecting and subscribing stays well within it."""


def simulator(subscribe_timeout: float) -> CoinbaseSimulator:
    return CoinbaseSimulator(
        symbols=(BTC, ETH),
        updates_per_second=500,
        levels=20,
        seed=3,
        subscribe_timeout=subscribe_timeout,
        heartbeat_interval=0.02,
        clock_ns=lambda: CLOCK_NS,
    )


@pytest.fixture
async def sim() -> AsyncIterator[CoinbaseSimulator]:
    """A venue that waits long for a subscription (Coinbase's own 5 s, doubled): a test
    opening two connections before subscribing either never sees one closed."""
    async with simulator(subscribe_timeout=10.0) as venue:
        yield venue


@pytest.fixture
async def impatient_sim() -> AsyncIterator[CoinbaseSimulator]:
    """A venue that soon closes a connection that has not subscribed."""
    async with simulator(subscribe_timeout=IMPATIENT_SECONDS) as venue:
        yield venue


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(GUARD_SECONDS):
        message: dict[str, Any] = orjson.loads(await ws.recv())
        return message


async def _request(ws: ClientConnection, **request: Any) -> None:
    await ws.send(orjson.dumps(request).decode())


class _ClientBook:
    """A level2 book kept with Coinbase's documented rules (written here, independently)."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[int, int]] = {"bid": {}, "offer": {}}

    def apply(self, event: dict[str, Any]) -> None:
        if event["type"] == "snapshot":
            self.sides = {"bid": {}, "offer": {}}
        for update in event["updates"]:
            assert list(update) == UPDATE_KEYS
            side = self.sides[update["side"]]
            price, qty = parse_fixed(update["price_level"]), parse_fixed(update["new_quantity"])
            if qty:
                side[price] = qty
            else:
                side.pop(price, None)

    def levels(self) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        bids, asks = self.sides["bid"], self.sides["offer"]
        return tuple(sorted(bids.items(), reverse=True)), tuple(sorted(asks.items()))


async def test_a_subscription_streams_numbered_messages_that_rebuild_the_true_book(
    sim: CoinbaseSimulator,
) -> None:
    async with connect(sim.ws_url) as ws:
        await _request(ws, type="subscribe", product_ids=["BTC-USD"], channel="level2")
        await _request(ws, type="subscribe", channel="heartbeats")
        messages = [await _recv(ws) for _ in range(60)]
        sim.pause()
        # Requests are answered in order with market data: once this reply is here,
        # every update sent before the pause is too.
        await _request(ws, type="subscribe", product_ids=["BTC-USD"], channel="status")
        while messages[-1]["channel"] != "subscriptions" or "status" not in str(messages[-1]):
            messages.append(await _recv(ws))
    book = _ClientBook()
    for message in messages:
        if message["channel"] == "l2_data":
            (event,) = message["events"]
            book.apply(event)
    assert [m["sequence_num"] for m in messages] == list(range(len(messages)))
    assert all(list(m) == ENVELOPE_KEYS for m in messages)
    assert all((m["client_id"], m["timestamp"]) == ("", TIMESTAMP) for m in messages)
    subscriptions = [m["events"] for m in messages if m["channel"] == "subscriptions"]
    assert subscriptions == [
        [{"subscriptions": {"level2": ["BTC-USD"]}}],
        [{"subscriptions": {"level2": ["BTC-USD"], "heartbeats": ["heartbeats"]}}],
        [
            {
                "subscriptions": {
                    "level2": ["BTC-USD"],
                    "heartbeats": ["heartbeats"],
                    "status": ["BTC-USD"],
                }
            }
        ],
    ]
    snapshot = messages[1]
    assert snapshot["channel"] == "l2_data"
    assert [(e["type"], e["product_id"]) for e in snapshot["events"]] == [("snapshot", "BTC-USD")]
    heartbeats = [m["events"] for m in messages if m["channel"] == "heartbeats"]
    assert heartbeats, "no heartbeat while the market moved"
    assert [h[0]["heartbeat_counter"] for h in heartbeats] == list(range(1, len(heartbeats) + 1))
    assert heartbeats[0][0]["current_time"] == "2023-02-09 20:32:50.714964855 +0000 UTC"
    updates = [m["events"][0] for m in messages[2:] if m["channel"] == "l2_data"]
    assert updates and all(u["type"] == "update" for u in updates)
    prices = [u["price_level"] for e in updates for u in e["updates"]]
    assert all(len(p.partition(".")[2]) == 2 for p in prices)
    assert book.levels() == (sim.book("BTC-USD").bids, sim.book("BTC-USD").asks)


async def test_no_subscribe_in_time_closes_the_connection(
    impatient_sim: CoinbaseSimulator,
) -> None:
    async with connect(impatient_sim.ws_url) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await _recv(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.reason == "no subscribe message within 1 seconds"
    await eventually(lambda: impatient_sim.clients == 0, "the venue forgot the client")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"type": "subscribe", "channels": ["level2"]}, "a request names exactly one channel"),
        ({"type": "subscribe", "channel": "level3", "product_ids": ["BTC-USD"]}, "unknown channel"),
        (
            {"type": "subscribe", "channel": "level2", "product_ids": ["DOGE-USD"]},
            "unknown product",
        ),
        ({"type": "subscribe", "channel": "level2"}, "channel level2 needs product_ids"),
        ({"type": "subscribe", "channel": "level2", "product_ids": "BTC-USD"}, "must be a list"),
        ({"type": "hello"}, "unknown message type 'hello'"),
        ([1, 2], "expected a JSON object"),
    ],
)
async def test_bad_requests_get_errors_and_do_not_count_as_subscribing(
    impatient_sim: CoinbaseSimulator, request_: Any, message: str
) -> None:
    sim = impatient_sim
    async with connect(sim.ws_url) as ws:
        await ws.send(orjson.dumps(request_).decode())
        error = await _recv(ws)
        with pytest.raises(ConnectionClosed):
            await _recv(ws)
    assert list(error) == ["type", "message"]
    assert error["type"] == "error" and message in error["message"]
    assert sim.subscribers("BTC-USD") == 0


async def test_unsubscribe_stops_the_product_and_silent_channels_are_accepted(
    sim: CoinbaseSimulator,
) -> None:
    async with connect(sim.ws_url) as ws:
        await _request(ws, type="subscribe", product_ids=["ETH-USD"], channel="level2")
        await _request(ws, type="subscribe", product_ids=["ETH-USD"], channel="ticker")
        await _request(ws, type="unsubscribe", product_ids=["ETH-USD"], channel="level2")
        subscriptions: list[dict[str, list[str]]] = []
        while len(subscriptions) < 3:
            message = await _recv(ws)
            if message["channel"] == "subscriptions":
                subscriptions.append(message["events"][0]["subscriptions"])
        assert sim.subscribers("ETH-USD") == 0
        await _request(ws, type="subscribe", channel="heartbeats")
        after = [await _recv(ws) for _ in range(3)]
    assert subscriptions == [
        {"level2": ["ETH-USD"]},
        {"level2": ["ETH-USD"], "ticker": ["ETH-USD"]},
        {"ticker": ["ETH-USD"]},
    ]
    assert [m["channel"] for m in after] == ["subscriptions", "heartbeats", "heartbeats"]


async def test_faults_hit_only_their_targets(sim: CoinbaseSimulator) -> None:
    async with connect(sim.ws_url) as btc, connect(sim.ws_url) as eth:
        await _request(btc, type="subscribe", product_ids=["BTC-USD"], channel="level2")
        await _request(eth, type="subscribe", product_ids=["ETH-USD"], channel="level2")
        sequences: dict[ClientConnection, list[int]] = {}
        for ws in (btc, eth):
            await _recv(ws)  # subscriptions
            snapshot = await _recv(ws)
            assert snapshot["events"][0]["type"] == "snapshot"
            sequences[ws] = [snapshot["sequence_num"]]
        sim.inject(Fault.DROP)
        sim.send_malformed()
        sim.send_error("rate limit exceeded")
        others: dict[ClientConnection, list[str | bytes]] = {btc: [], eth: []}
        for ws in (btc, eth):
            # However many updates were queued before the faults (a loaded machine reads
            # late), the two unnumbered frames come right after them, and the lost update
            # is the next one: two numbers after those frames show the gap.
            after_faults = 0
            while len(others[ws]) < 2 or after_faults < 2:
                async with asyncio.timeout(GUARD_SECONDS):
                    frame = await ws.recv()
                try:
                    sequences[ws].append(orjson.loads(frame)["sequence_num"])
                except (orjson.JSONDecodeError, KeyError):
                    others[ws].append(frame)
                else:
                    after_faults += len(others[ws]) == 2
        sim.disconnect_all()
        with pytest.raises(ConnectionClosed):
            while True:
                await _recv(btc)
    for ws in (btc, eth):
        numbers = sequences[ws]
        assert numbers[0] == 1
        steps = [b - a for a, b in zip(numbers, numbers[1:], strict=False)]
        assert sorted(set(steps)) == [1, 2] and steps.count(2) == 1  # one lost update
        assert others[ws] == [
            '{"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:5',
            '{"type":"error","message":"rate limit exceeded"}',
        ]
    assert sim.faults == FaultCounters(dropped=2, disconnected=2, malformed=2, errors=2)
