"""The simulated OKX venue over real loopback websockets, checked against OKX's documented
v5 formats by a plain client that rebuilds books with its own small code (dicts, and
``zlib`` over the check string it builds itself)."""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from book.fixed import parse_fixed
from feeds.simulator.faults import Fault, FaultCounters
from feeds.simulator.market import SimSymbol
from feeds.simulator.okx import OkxSimulator
from feeds.simulator.venue import run_simulator

BTC = SimSymbol(
    "BTC-USDT",
    price="61800.0",
    tick="0.1",
    lot="0.00000001",
    mean_qty="0.25",
    max_gap_ticks=5,
    price_decimals=1,
    qty_decimals=8,
)
SWAP = SimSymbol(
    "BTC-USDT-SWAP",
    price="61800.0",
    tick="0.1",
    lot="0.01",
    mean_qty="40",
    price_decimals=2,
    qty_decimals=2,
)
CLOCK_MS = 1_723_161_255_308
GUARD_SECONDS = 10  # fail instead of hanging if frames stop; never part of an assertion
DATA_KEYS = ["asks", "bids", "ts", "checksum", "prevSeqId", "seqId"]
SHORTEST = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$")


def subscribe(*inst_ids: str, op: str = "subscribe", **extra: Any) -> str:
    args = [{"channel": "books", "instId": inst_id} for inst_id in inst_ids]
    return orjson.dumps({**extra, "op": op, "args": args}).decode()


@pytest.fixture
async def sim() -> AsyncIterator[OkxSimulator]:
    async with OkxSimulator(
        symbols=(BTC, SWAP),
        updates_per_second=1000,
        levels=30,
        seed=7,
        push_interval=0.02,
        clock_ns=lambda: CLOCK_MS * 1_000_000 + 123_456,
    ) as simulator:
        yield simulator


def _connect(simulator: OkxSimulator) -> connect:
    return connect(simulator.ws_url + "/ws/v5/public", max_queue=None)


async def _recv(ws: ClientConnection) -> Any:
    async with asyncio.timeout(GUARD_SECONDS):
        frame = await ws.recv()
    return frame if frame in ("pong",) else orjson.loads(frame)


class Books:
    """A client's own OKX book keeping: snapshot, seqId chain, checksum over its strings."""

    def __init__(self) -> None:
        self.sides: dict[str, tuple[dict[int, list[str]], dict[int, list[str]]]] = {}
        self.last_seq: dict[str, int] = {}
        self.applied = 0
        self.checked = 0

    def apply(self, message: dict[str, Any]) -> None:
        self.applied += 1
        inst_id = message["arg"]["instId"]
        (data,) = message["data"]
        assert list(data) == DATA_KEYS
        assert data["ts"] == str(CLOCK_MS)
        if message["action"] == "snapshot":
            assert data["prevSeqId"] == -1
            self.sides[inst_id] = ({}, {})
        else:
            assert message["action"] == "update"
            assert data["prevSeqId"] == self.last_seq[inst_id], "seqId chain broken"
        self.last_seq[inst_id] = data["seqId"]
        for side, rows in zip(self.sides[inst_id], (data["bids"], data["asks"]), strict=True):
            for row in rows:
                px, sz, zero, orders = row
                assert zero == "0" and orders.isdigit() and (sz == "0") == (orders == "0")
                if sz == "0":
                    side.pop(parse_fixed(px), None)  # may be created and deleted in one push
                else:
                    side[parse_fixed(px)] = row
        bids, asks = self.top(inst_id, 25)
        parts = []
        for i in range(25):
            parts += bids[i][:2] if i < len(bids) else []
            parts += asks[i][:2] if i < len(asks) else []
        crc = zlib.crc32(":".join(parts).encode())
        if data["checksum"]:
            assert data["checksum"] == (crc - 2**32 if crc >= 2**31 else crc), "bad checksum"
            self.checked += 1

    def top(self, inst_id: str, depth: int) -> tuple[list[list[str]], list[list[str]]]:
        bids, asks = self.sides[inst_id]
        return (
            [bids[px] for px in sorted(bids, reverse=True)[:depth]],
            [asks[px] for px in sorted(asks)[:depth]],
        )

    def levels(self, inst_id: str) -> tuple[tuple[tuple[int, int], ...], ...]:
        return tuple(
            tuple((parse_fixed(px), parse_fixed(sz)) for px, sz, *_ in side)
            for side in self.top(inst_id, 1000)
        )


async def _books(ws: ClientConnection, books: Books, count: int) -> list[dict[str, Any]]:
    seen = []
    while len(seen) < count:
        message = await _recv(ws)
        books.apply(message)
        seen.append(message)
    return seen


async def test_subscribe_ack_snapshot_updates_chain_and_checksums(sim: OkxSimulator) -> None:
    books = Books()
    async with _connect(sim) as ws:
        await ws.send(subscribe("BTC-USDT", "BTC-USDT-SWAP", id="1512"))
        for inst_id in ("BTC-USDT", "BTC-USDT-SWAP"):
            assert await _recv(ws) == {
                "id": "1512",
                "event": "subscribe",
                "arg": {"channel": "books", "instId": inst_id},
                "connId": "00000001",
            }
        messages = await _books(ws, books, 40)
        assert [m["action"] for m in messages[:2]] == ["snapshot", "snapshot"]
        assert {m["arg"]["instId"] for m in messages} == {"BTC-USDT", "BTC-USDT-SWAP"}
        assert all(
            len(side) == 30
            for m in messages[:2]
            for side in m["data"][0].values()
            if isinstance(side, list)
        )
        rows = [row for m in messages for key in ("bids", "asks") for row in m["data"][0][key]]
        assert all(SHORTEST.match(px) and SHORTEST.match(sz) for px, sz, *_ in rows)
        sim.pause()
        while True:
            try:
                async with asyncio.timeout(0.3):
                    books.apply(orjson.loads(await ws.recv()))
            except TimeoutError:
                break
    assert books.checked == books.applied >= 40
    for inst_id in ("BTC-USDT", "BTC-USDT-SWAP"):
        truth = sim.book(inst_id)
        assert books.levels(inst_id) == (truth.bids, truth.asks)
        assert books.last_seq[inst_id] == sim.seq_id(inst_id)
        assert sim.snapshots_sent(inst_id) == 1


async def _first_messages(books: Books, **options: Any) -> list[dict[str, Any]]:
    async with (
        OkxSimulator(
            symbols=(SWAP,),
            levels=30,
            push_interval=0.02,
            clock_ns=lambda: CLOCK_MS * 1_000_000,
            **options,
        ) as simulator,
        _connect(simulator) as ws,
    ):
        await ws.send(subscribe("BTC-USDT-SWAP"))
        await _recv(ws)
        return await _books(ws, books, 5)


async def test_checksum_zero_mode() -> None:
    books = Books()
    messages = await _first_messages(books, checksums=False)
    assert {m["data"][0]["checksum"] for m in messages} == {0}
    assert (books.applied, books.checked) == (5, 0)


async def test_padded_numbers_are_checksummed_as_sent() -> None:
    books = Books()
    messages = await _first_messages(books, padded_numbers=True)
    rows = [row for m in messages for key in ("bids", "asks") for row in m["data"][0][key]]
    assert all(re.fullmatch(r"[0-9]+\.[0-9]{2}", px) for px, *_ in rows)
    assert all(re.fullmatch(r"[0-9]+\.[0-9]{2}", sz) for _, sz, *_ in rows if sz != "0")
    assert any(px.endswith("0") for px, *_ in rows)
    assert (books.applied, books.checked) == (5, 5)


async def test_unsubscribe_stops_the_channel(sim: OkxSimulator) -> None:
    async with _connect(sim) as ws:
        await ws.send(subscribe("BTC-USDT", "BTC-USDT-SWAP"))
        await _recv(ws), await _recv(ws)
        books = Books()
        await _books(ws, books, 4)
        await ws.send(subscribe("BTC-USDT", op="unsubscribe"))
        while (message := await _recv(ws)).get("event") is None:
            books.apply(message)
        assert message == {
            "event": "unsubscribe",
            "arg": {"channel": "books", "instId": "BTC-USDT"},
            "connId": "00000001",
        }
        after = await _books(ws, books, 10)
    assert {m["arg"]["instId"] for m in after} == {"BTC-USDT-SWAP"}


async def test_errors_pong_other_channels_and_paths(sim: OkxSimulator) -> None:
    async with _connect(sim) as ws:
        await ws.send("ping")
        assert await _recv(ws) == "pong"
        await ws.send("{nope")
        assert await _recv(ws) == {
            "event": "error",
            "code": "60012",
            "msg": "Invalid request: {nope",
            "connId": "00000001",
        }
        bad_op = '{"id":"9","op":"subscribe","argss":[{"channel":"books"}]}'
        await ws.send(bad_op)
        assert await _recv(ws) == {
            "id": "9",
            "event": "error",
            "code": "60012",
            "msg": f"Invalid request: {bad_op}",
            "connId": "00000001",
        }
        await ws.send(subscribe("ETH-BTC"))
        assert await _recv(ws) == {
            "event": "error",
            "code": "60018",
            "msg": "Wrong URL or channel:books,instId:ETH-BTC doesn't exist. Please use the "
            "correct URL, channel and parameters referring to API document.",
            "connId": "00000001",
        }
        await ws.send('{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}')
        assert await _recv(ws) == {
            "event": "subscribe",
            "arg": {"channel": "trades", "instId": "BTC-USDT"},
            "connId": "00000001",
        }
        await ws.send("ping")
        assert await _recv(ws) == "pong"  # nothing was pushed for trades
    assert sim.pongs_sent == 2
    with pytest.raises(InvalidStatus, match="404"):
        async with connect(sim.ws_url + "/ws/v5/private"):
            pass


async def test_faults(sim: OkxSimulator) -> None:
    async with _connect(sim) as ws:
        await ws.send(subscribe("BTC-USDT"))
        await _recv(ws)
        books = Books()
        await _books(ws, books, 3)
        sim.reset_sequence("BTC-USDT")
        last = books.last_seq["BTC-USDT"]
        (reset,) = await _books(ws, books, 1)
        assert reset["data"][0]["prevSeqId"] == last > reset["data"][0]["seqId"] > 0
        sim.drop_next("BTC-USDT")
        last = books.last_seq["BTC-USDT"]
        gap = (await _recv(ws))["data"][0]
        assert gap["prevSeqId"] > last
        await ws.send(subscribe("BTC-USDT", op="unsubscribe"))  # resync, as a handler does
        await ws.send(subscribe("BTC-USDT"))
        while (await _recv(ws)).get("event") != "subscribe":
            pass
        (snapshot,) = await _books(ws, books, 1)
        assert snapshot["action"] == "snapshot"
        sim.corrupt_next_checksum("BTC-USDT")
        with pytest.raises(AssertionError, match="bad checksum"):
            await _books(ws, books, 1)
        sim.send_error()
        sim.send_notice()
        sim.send_malformed()
        frames = [await ws.recv() for _ in range(8)]
        controls = [f for f in frames if '"data"' not in f]
        assert controls == [
            '{"event":"error","code":"60012","msg":"Invalid request","connId":"00000001"}',
            '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a '
            'service upgrade. Please reconnect.","connId":"00000001"}',
            '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"upd',
        ]
        sim.go_silent(0.3)
        sim.disconnect_all()
        with pytest.raises(ConnectionClosedError):
            while True:
                await _recv(ws)
    assert sim.faults == FaultCounters(
        dropped=1,
        corrupted_checksums=1,
        restarts=1,
        disconnected=1,
        silences=1,
        malformed=1,
        errors=1,
        shutdown_notices=1,
    )


async def test_silence_holds_updates_and_snapshots(sim: OkxSimulator) -> None:
    sim.go_silent(0.5)
    async with _connect(sim) as ws:
        await ws.send(subscribe("BTC-USDT"))
        assert (await _recv(ws))["event"] == "subscribe"
        await ws.send("ping")
        assert await _recv(ws) == "pong"  # control still answered
        assert sim.snapshots_sent("BTC-USDT") == 0
        first = await _recv(ws)  # after the silence
        assert first["action"] == "snapshot"


async def test_run_simulator_serves_until_cancelled_and_injects_faults() -> None:
    ready: asyncio.Queue[OkxSimulator] = asyncio.Queue()
    task = asyncio.create_task(
        run_simulator(
            OkxSimulator(symbols=(BTC,), levels=10),
            faults=[Fault.ERROR, Fault.DROP],
            fault_interval=0.05,
            on_ready=ready.put_nowait,
        )
    )
    simulator = await asyncio.wait_for(ready.get(), GUARD_SECONDS)
    async with _connect(simulator) as ws:
        await ws.send(subscribe("BTC-USDT"))
        while (await _recv(ws)).get("event") != "error":
            pass
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert simulator.faults.errors >= 1


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="levels"):
        OkxSimulator(levels=401)
    with pytest.raises(ValueError, match="updates_per_second"):
        OkxSimulator(updates_per_second=0)
    with pytest.raises(ValueError, match="distinct"):
        OkxSimulator(symbols=(BTC, BTC))
