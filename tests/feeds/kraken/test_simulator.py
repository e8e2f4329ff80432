"""The simulated Kraken v2 venue, spoken to over loopback by a plain websocket client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from feeds.events import BookDeltaEvent, BookSnapshotEvent
from feeds.kraken.checksum import Precision, PrecisionTable
from feeds.kraken.parser import KrakenParser
from feeds.kraken.sync import KrakenBookSync
from feeds.simulator.faults import Fault, FaultCounters
from feeds.simulator.kraken import KrakenSimulator
from feeds.simulator.venue import run_simulator
from feeds.symbols import SymbolMap
from feeds.sync import ProblemKind, SyncResult
from tests.waiting import within

BTC = "kraken:BTC-USD"
SYMBOLS = SymbolMap("kraken", {"BTC-USD": "BTC/USD", "ETH-USD": "ETH/USD", "SOL-USD": "SOL/USD"})
TIMES = ("time_in", "time_out")


@pytest.fixture
async def simulator() -> AsyncIterator[KrakenSimulator]:
    async with KrakenSimulator(updates_per_second=500, levels=40, seed=3) as venue:
        yield venue


@pytest.fixture
async def client(simulator: KrakenSimulator) -> AsyncIterator[ClientConnection]:
    async with connect(simulator.v2_url) as ws:
        status = await receive(ws)
        assert status["channel"] == "status"
        assert status["data"][0]["system"] == "online"
        yield ws


async def receive(ws: ClientConnection) -> Any:
    """The next frame that is not a heartbeat, decoded."""
    while True:
        message = orjson.loads(await within(ws.recv(), "a frame from the venue"))
        if message != {"channel": "heartbeat"}:
            return message


def without_times(reply: dict[str, Any]) -> dict[str, Any]:
    assert all(isinstance(reply.pop(key), str) for key in TIMES)
    return reply


async def send(ws: ClientConnection, request: object) -> None:
    await ws.send(orjson.dumps(request).decode())


def book_request(method: str, symbols: list[str], req_id: int, **params: object) -> object:
    return {
        "method": method,
        "params": {"channel": "book", "symbol": symbols, **params},
        "req_id": req_id,
    }


class Client:
    """The real parser and sync, fed by the simulator's frames."""

    def __init__(self, *depths: int) -> None:
        self.table = PrecisionTable({BTC: Precision(1, 8)})
        self.parser = KrakenParser(SYMBOLS, self.table)
        self.syncs = [KrakenBookSync(BTC, depth=d, precisions=self.table) for d in depths]
        self.results: list[list[SyncResult]] = [[] for _ in depths]
        self.updates = 0

    def feed(self, frame: str | bytes) -> None:
        for event in self.parser.parse(frame):
            if isinstance(event, BookSnapshotEvent):
                for sync, results in zip(self.syncs, self.results, strict=True):
                    results.append(sync.on_snapshot(event, 0))
            elif isinstance(event, BookDeltaEvent):
                self.updates += 1
                for sync, results in zip(self.syncs, self.results, strict=True):
                    results.append(sync.on_delta(event, 0))


async def drain(ws: ClientConnection, client: Client, req_id: int = 99) -> None:
    """Feed every frame sent before a ping's pong (frames arrive in order)."""
    await send(ws, {"method": "ping", "req_id": req_id})
    while True:
        frame = await within(ws.recv(), "the pong")
        if orjson.loads(frame).get("method") == "pong":
            return
        client.feed(frame)


async def test_subscription_snapshot_and_updates_verify_and_equal_the_truth(
    simulator: KrakenSimulator, client: ClientConnection
) -> None:
    await send(client, book_request("subscribe", ["BTC/USD"], 1, depth=10, snapshot=True))
    assert without_times(await receive(client)) == {
        "method": "subscribe",
        "req_id": 1,
        "result": {"channel": "book", "depth": 10, "symbol": "BTC/USD", "snapshot": True},
        "success": True,
    }
    reader = Client(10)
    while reader.updates < 100:
        reader.feed(await client.recv())
    simulator.pause()
    await drain(client, reader)
    (results,) = reader.results
    assert all(r.problem is None and r.snapshot is not None for r in results)
    truth = simulator.book("BTC/USD", 10)
    (sync,) = reader.syncs
    assert (sync.book.top_bids(10), sync.book.top_asks(10)) == (truth.bids, truth.asks)
    assert sync.verified == len(results) == reader.updates + 1
    assert simulator.snapshots_sent("BTC/USD") == 1


async def test_updates_rely_on_the_client_truncating_to_its_depth() -> None:
    """Like Kraken, the venue never deletes a level that fell out of the subscribed
    depth: a client that keeps a deeper book fails a checksum, one that truncates never."""
    # A still clock keeps the reference price still: the market is a fixed sequence.
    still = KrakenSimulator(updates_per_second=1000, levels=40, seed=3, clock_ns=lambda: 0)
    async with still as simulator:
        simulator.pause()  # the market starts with the subscription: a fixed sequence
        async with connect(simulator.v2_url) as ws:
            await receive(ws)
            await send(ws, book_request("subscribe", ["BTC/USD"], 1, depth=10))
            await receive(ws)
            simulator.resume()
            reader = Client(10, 1000)
            while reader.updates < 300:
                reader.feed(await ws.recv())
    truncating, deep = reader.results
    assert all(r.problem is None for r in truncating)
    problems = [r.problem for r in deep if r.problem is not None]
    assert problems and problems[0].kind is ProblemKind.CHECKSUM


async def test_deeper_subscriptions_verify_too(
    simulator: KrakenSimulator, client: ClientConnection
) -> None:
    await send(client, book_request("subscribe", ["BTC/USD"], 1, depth=25))
    await receive(client)
    reader = Client(25)
    while reader.updates < 100:
        reader.feed(await client.recv())
    simulator.pause()
    await drain(client, reader)
    assert all(r.problem is None for r in reader.results[0])
    truth = simulator.book("BTC/USD", 25)
    book = reader.syncs[0].book
    assert (book.top_bids(25), book.top_asks(25)) == (truth.bids, truth.asks)


async def test_errors_are_worded_as_krakens(client: ClientConnection) -> None:
    await send(client, book_request("subscribe", ["BTC/USD", "XRP/USD"], 1))
    ack, snapshot, rejected = [await receive(client) for _ in range(3)]
    assert without_times(ack)["success"] is True
    assert (snapshot["channel"], snapshot["type"]) == ("book", "snapshot")
    assert without_times(rejected) == {
        "method": "subscribe",
        "req_id": 1,
        "error": "Currency pair not supported",
        "symbol": "XRP/USD",
        "success": False,
    }
    invalid = "EGeneral:Invalid arguments"
    requests: list[tuple[object, dict[str, Any]]] = [
        (
            book_request("subscribe", ["BTC/USD"], 2, depth=25),
            {
                "method": "subscribe",
                "req_id": 2,
                "error": "Already subscribed",
                "symbol": "BTC/USD",
            },
        ),
        (
            book_request("unsubscribe", ["ETH/USD"], 3),
            {
                "method": "unsubscribe",
                "req_id": 3,
                "error": "Subscription Not Found",
                "symbol": "ETH/USD",
            },
        ),
        (
            book_request("subscribe", ["ETH/USD"], 4, depth=20),
            {"method": "subscribe", "req_id": 4, "error": invalid},
        ),
        (
            {"method": "subscribe", "params": {"channel": "ohlc", "symbol": ["BTC/USD"]}},
            {"method": "subscribe", "error": "Channel ohlc not supported"},
        ),
        (
            {"method": "add_order", "req_id": 5},
            {"method": "add_order", "req_id": 5, "error": "Method not found"},
        ),
        ([1, 2], {"error": invalid}),
        ("{not json", {"error": invalid}),
    ]
    for request, expected in requests:
        await client.send(request if isinstance(request, str) else orjson.dumps(request).decode())
        assert without_times(await _reply(client)) == {**expected, "success": False}


async def _reply(ws: ClientConnection) -> Any:
    """The next frame that is neither a heartbeat nor book data."""
    while True:
        message = await receive(ws)
        if message.get("channel") != "book":
            return message


async def test_unsubscribe_stops_that_pair_only(
    simulator: KrakenSimulator, client: ClientConnection
) -> None:
    await send(client, book_request("subscribe", ["BTC/USD", "ETH/USD"], 1))
    await send(client, book_request("unsubscribe", ["BTC/USD"], 2))
    while (message := await receive(client)).get("method") != "unsubscribe":
        pass
    assert without_times(message) == {
        "method": "unsubscribe",
        "req_id": 2,
        "result": {"channel": "book", "depth": 10, "symbol": "BTC/USD"},
        "success": True,
    }
    symbols = [(await receive(client))["data"][0]["symbol"] for _ in range(30)]
    assert symbols == ["ETH/USD"] * 30
    assert simulator.unsubscribes("BTC/USD") == 1


async def test_a_subscription_without_snapshot_gets_updates_only(
    simulator: KrakenSimulator, client: ClientConnection
) -> None:
    simulator.hold_snapshots("ETH/USD")  # nothing to hold without a snapshot
    await send(client, book_request("subscribe", ["ETH/USD"], 1, snapshot=False))
    ack = without_times(await receive(client))
    assert ack["result"] == {"channel": "book", "depth": 10, "symbol": "ETH/USD", "snapshot": False}
    update = await receive(client)
    assert (update["type"], update["data"][0]["symbol"]) == ("update", "ETH/USD")
    assert simulator.snapshots_sent("ETH/USD") == 0


async def test_held_snapshots_wait_for_release(
    simulator: KrakenSimulator, client: ClientConnection
) -> None:
    simulator.hold_snapshots("BTC/USD")
    await send(client, book_request("subscribe", ["BTC/USD", "ETH/USD"], 1))
    replies = [await receive(client) for _ in range(4)]
    assert [(m.get("method"), m.get("type")) for m in replies[:3]] == [
        ("subscribe", None),
        ("subscribe", None),
        (None, "snapshot"),
    ]
    assert replies[2]["data"][0]["symbol"] == "ETH/USD"
    assert simulator.snapshots_sent("BTC/USD") == 0
    simulator.release_snapshots("BTC/USD")
    while (m := await receive(client))["type"] != "snapshot":
        assert m["data"][0]["symbol"] == "ETH/USD"
    assert m["data"][0]["symbol"] == "BTC/USD"
    assert simulator.snapshots_sent("BTC/USD") == 1


async def test_ping_heartbeat_and_instrument_channel() -> None:
    async with KrakenSimulator(heartbeat_interval=0.02, seed=3) as simulator:
        simulator.pause()
        async with connect(simulator.v2_url) as ws:
            await receive(ws)
            await send(ws, {"method": "ping", "req_id": 42})
            assert without_times(orjson.loads(await ws.recv())) == {"method": "pong", "req_id": 42}
            await send(ws, {"method": "subscribe", "params": {"channel": "instrument"}})
            assert without_times(orjson.loads(await ws.recv())) == {
                "method": "subscribe",
                "result": {"channel": "instrument", "snapshot": True},
                "success": True,
            }
            instruments = orjson.loads(await ws.recv())
            assert (instruments["channel"], instruments["type"]) == ("instrument", "snapshot")
            pairs = {
                p["symbol"]: (p["price_precision"], p["qty_precision"], p["price_increment"])
                for p in instruments["data"]["pairs"]
            }
            assert pairs == {
                "BTC/USD": (1, 8, 0.1),
                "ETH/USD": (2, 8, 0.01),
                "SOL/USD": (2, 8, 0.01),
            }
            # The market is paused: a subscribed client hears heartbeats.
            assert orjson.loads(await ws.recv()) == {"channel": "heartbeat"}
            assert simulator.pongs_sent == 1


async def test_only_the_v2_path_is_served(simulator: KrakenSimulator) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(simulator.ws_url + "/"):
            pass
    assert caught.value.response.status_code == 404


async def test_injected_faults(simulator: KrakenSimulator, client: ClientConnection) -> None:
    await send(client, book_request("subscribe", ["BTC/USD"], 1))
    await receive(client)
    reader = Client(10)
    reader.feed(await client.recv())  # the snapshot
    simulator.inject(Fault.CHECKSUM)
    while not any(r.problem for r in reader.results[0]):
        reader.feed(await client.recv())
    assert [r.problem.kind for r in reader.results[0] if r.problem] == [ProblemKind.CHECKSUM]
    simulator.inject(Fault.MALFORMED)
    simulator.inject(Fault.ERROR)
    frames = [str(await client.recv()) for _ in range(200)]
    assert _MALFORMED_TEXT in frames
    errors = [orjson.loads(f) for f in frames if '"error"' in f and f != _MALFORMED_TEXT]
    assert [without_times(e) for e in errors] == [
        {"error": "EGeneral:Internal error", "success": False}
    ]
    simulator.inject(Fault.SILENCE, silence_seconds=0.0)
    simulator.inject(Fault.DISCONNECT)
    with pytest.raises(ConnectionClosed):
        while True:
            await client.recv()
    assert simulator.faults == FaultCounters(
        dropped=0, corrupted_checksums=1, disconnected=1, silences=1, malformed=1, errors=1
    )


async def test_a_dropped_update_fails_a_checksum(
    simulator: KrakenSimulator, client: ClientConnection
) -> None:
    await send(client, book_request("subscribe", ["BTC/USD"], 1))
    await receive(client)
    reader = Client(10)
    reader.feed(await client.recv())
    simulator.drop_next("BTC/USD")
    while not any(r.problem for r in reader.results[0]):
        reader.feed(await client.recv())
    problems = [r.problem for r in reader.results[0] if r.problem]
    assert [p.kind for p in problems] == [ProblemKind.CHECKSUM]
    assert simulator.faults.dropped >= 1


async def test_run_simulator_serves_and_injects_in_rotation() -> None:
    ready: asyncio.Queue[KrakenSimulator] = asyncio.Queue()
    task = asyncio.create_task(
        run_simulator(
            KrakenSimulator(updates_per_second=50),
            faults=[Fault.MALFORMED],
            fault_interval=0.05,
            on_ready=ready.put_nowait,
        )
    )
    try:
        simulator = await ready.get()
        async with connect(simulator.v2_url) as ws:
            while await ws.recv() != _MALFORMED_TEXT:
                pass
        assert simulator.faults.malformed >= 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


_MALFORMED_TEXT = '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bi'
