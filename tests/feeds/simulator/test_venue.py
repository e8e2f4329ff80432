"""What every simulated venue shares (``LoopbackVenue``): fault injection, held snapshots,
``run_simulator``; shown on the Binance simulator over real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from feeds.simulator.binance import BinanceSimulator
from feeds.simulator.faults import Fault, FaultCounters
from feeds.simulator.market import SimSymbol
from feeds.simulator.venue import run_simulator

BTC = SimSymbol("BTCUSDT", price="61800.00", tick="0.01", lot="0.00001", mean_qty="0.25")
ETH = SimSymbol("ETHUSDT", price="2600.00", tick="0.01", lot="0.0001", mean_qty="3")
GUARD_SECONDS = 10  # fail instead of hanging; never part of an assertion


@pytest.fixture
async def sim() -> AsyncIterator[BinanceSimulator]:
    async with BinanceSimulator(symbols=(BTC, ETH), updates_per_second=1000, levels=10) as venue:
        yield venue


async def test_an_instrument_fault_hits_only_the_symbol_named(sim: BinanceSimulator) -> None:
    streams = "btcusdt@depth@100ms/ethusdt@depth@100ms"
    async with connect(f"{sim.ws_url}/stream?streams={streams}") as ws:
        last_u: dict[str, int] = {}
        while len(last_u) < 2:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), GUARD_SECONDS))
            last_u[frame["data"]["s"]] = frame["data"]["u"]
        sim.inject(Fault.DROP, symbol="ETHUSDT")
        gaps: dict[str, int] = {"BTCUSDT": 0, "ETHUSDT": 0}
        seen = 0
        while seen < 8:  # four pushes of each symbol after the drop
            event = orjson.loads(await asyncio.wait_for(ws.recv(), GUARD_SECONDS))["data"]
            gaps[event["s"]] += event["U"] != last_u[event["s"]] + 1
            last_u[event["s"]] = event["u"]
            seen += 1
    assert gaps == {"BTCUSDT": 0, "ETHUSDT": 1}
    assert sim.faults == FaultCounters(dropped=1)


def test_inject_refuses_what_the_venue_cannot_do() -> None:
    venue = BinanceSimulator(symbols=(BTC,))
    with pytest.raises(ValueError, match="cannot inject 'checksum'"):
        venue.inject(Fault.CHECKSUM)
    with pytest.raises(ValueError, match="'disconnect' hits every connection"):
        venue.inject(Fault.DISCONNECT, symbol="BTCUSDT")
    with pytest.raises(KeyError):
        venue.inject(Fault.DROP, symbol="ETHUSDT")
    with pytest.raises(KeyError):
        venue.hold_snapshots("ETHUSDT")
    assert venue.faults == FaultCounters()


async def test_a_held_rest_snapshot_is_answered_once_released(sim: BinanceSimulator) -> None:
    sim.hold_snapshots("BTCUSDT")
    async with (
        httpx.AsyncClient(base_url=sim.rest_url) as http,
        connect(sim.ws_url + "/ws/btcusdt@depth@100ms") as ws,
    ):
        held = asyncio.create_task(http.get("/api/v3/depth", params={"symbol": "BTCUSDT"}))
        other = await http.get("/api/v3/depth", params={"symbol": "ETHUSDT"})
        pushed = [orjson.loads(await ws.recv()) for _ in range(3)]  # the stream goes on
        assert not held.done()
        assert sim.snapshot_requests("BTCUSDT") == 0
        sim.release_snapshots("BTCUSDT")
        response = await asyncio.wait_for(held, GUARD_SECONDS)
    assert other.status_code == response.status_code == 200
    assert response.json()["lastUpdateId"] >= pushed[-1]["u"]
    assert sim.snapshot_requests("BTCUSDT") == 1


async def test_leaving_the_venue_answers_what_is_still_held() -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(GUARD_SECONDS):
        async with BinanceSimulator(symbols=(BTC,), updates_per_second=1000, levels=10) as venue:
            venue.hold_snapshots("BTCUSDT")
            held = asyncio.create_task(
                http.get(venue.rest_url + "/api/v3/depth", params={"symbol": "BTCUSDT"})
            )
            async with connect(venue.ws_url + "/ws/btcusdt@depth@100ms") as ws:
                for _ in range(2):  # the request has long arrived and waits
                    await ws.recv()
            assert not held.done()
        response = await held
    assert response.status_code == 200
    assert venue.snapshot_requests("BTCUSDT") == 1


@pytest.mark.parametrize(
    ("faults", "interval", "message"),
    [
        ([Fault.RESTART], 1.0, "unsupported faults restart"),
        ([Fault.DROP], 0.0, "fault_interval must be positive"),
    ],
)
async def test_run_simulator_checks_before_serving(
    faults: list[Fault], interval: float, message: str
) -> None:
    venue = BinanceSimulator(symbols=(BTC,))
    with pytest.raises(ValueError, match=message):
        await run_simulator(venue, faults=faults, fault_interval=interval)
    assert venue.port == 0  # never started
