"""The simulated Binance USD-M venue over real loopback websockets and HTTP (the real
handler against it is in ``tests/feeds/test_conformance.py``).

Shapes and key order are those of recorded USD-M traffic (tests/fixtures/recorded:
``BINANCE_FUTURES.ws.1.0``, ``hftbacktest/usdm``); the book a client rebuilds with
USD-M's own rules (``pu`` chain, ``U <= lastUpdateId <= u``) is compared with the
simulator's true book.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from book.fixed import format_fixed_places, parse_fixed
from feeds.simulator.binance import USDM_DEPTH_STREAMS, BinanceSimulator
from feeds.simulator.catalog import simulated_symbols
from feeds.simulator.faults import Fault, FaultCounters
from tests.feeds.simulator.test_binance import BinanceClientBook, recv_json, ticker_top

CLOCK_NS = 1_723_161_256_299_123_456
CLOCK_MS = 1_723_161_256_299
PRICE = re.compile(r"^[0-9]+\.[0-9]{2}$")
QTY = re.compile(r"^[0-9]+\.[0-9]{3}$")
DEPTH_KEYS = ["e", "E", "T", "s", "U", "u", "pu", "b", "a"]
TICKER_KEYS = ["e", "u", "s", "b", "B", "a", "A", "T", "E"]
BTC_STREAMS = "/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker"


@pytest.fixture
async def sim() -> AsyncIterator[BinanceSimulator]:
    async with BinanceSimulator(
        futures=True,
        symbols=simulated_symbols("binance-usdm")[:2],
        updates_per_second=1000,
        levels=30,
        seed=11,
        clock_ns=lambda: CLOCK_NS,
    ) as simulator:
        yield simulator


def _is_usdm_levels(levels: list[list[str]]) -> bool:
    return all(len(lv) == 2 and PRICE.match(lv[0]) and QTY.match(lv[1]) for lv in levels)


class UsdmClientBook(BinanceClientBook):
    """A local book kept with USD-M's documented rules (written here, independently)."""

    def follows(self, event: dict[str, Any]) -> bool:
        if not self.bridged:
            if event["u"] < self.update_id:
                return False  # older than the snapshot
            assert event["U"] <= self.update_id <= event["u"], "first event does not bridge"
            self.bridged = True
        else:
            assert event["pu"] == self.update_id, "gap in the diff-depth stream"
        return True


async def test_frames_have_the_usdm_shape_and_a_pu_chain(sim: BinanceSimulator) -> None:
    async with connect(sim.ws_url + BTC_STREAMS) as ws:
        frames: list[dict[str, Any]] = []
        while sum(frame["stream"] == "btcusdt@depth@100ms" for frame in frames) < 4:
            frames.append(await recv_json(ws))
    depth = [f["data"] for f in frames if f["stream"] == "btcusdt@depth@100ms"]
    tickers = [f["data"] for f in frames if f["stream"] == "btcusdt@bookTicker"]
    assert len(depth) + len(tickers) == len(frames)
    for event in depth:
        assert list(event) == DEPTH_KEYS
        assert (event["e"], event["E"], event["T"], event["s"]) == (
            "depthUpdate",
            CLOCK_MS,
            CLOCK_MS,
            "BTCUSDT",
        )
        assert event["pu"] < event["U"] <= event["u"]
        assert _is_usdm_levels(event["b"]) and _is_usdm_levels(event["a"])
    assert [e["pu"] for e in depth[1:]] == [e["u"] for e in depth[:-1]]
    assert tickers, "no bookTicker while the market moved"
    for ticker in tickers:
        assert list(ticker) == TICKER_KEYS
        assert (ticker["e"], ticker["s"], ticker["T"], ticker["E"]) == (
            "bookTicker",
            "BTCUSDT",
            CLOCK_MS,
            CLOCK_MS,
        )
        assert PRICE.match(ticker["b"]) and QTY.match(ticker["B"])
        assert parse_fixed(ticker["b"]) < parse_fixed(ticker["a"])


async def test_rest_depth_is_the_true_book_in_usdm_shape(sim: BinanceSimulator) -> None:
    sim.pause()
    truth = sim.book("ETHUSDT", 5)
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        response = await http.get("/fapi/v1/depth", params={"symbol": "ETHUSDT", "limit": "5"})
        default = await http.get("/fapi/v1/depth", params={"symbol": "ETHUSDT"})
        spot_path = await http.get("/api/v3/depth", params={"symbol": "ETHUSDT"})
        unknown = await http.get("/fapi/v1/depth", params={"symbol": "DOGEUSDT"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
    body = response.json()
    assert list(body) == ["lastUpdateId", "E", "T", "bids", "asks"]
    assert body == {
        "lastUpdateId": truth.update_id,
        "E": CLOCK_MS,
        "T": CLOCK_MS,
        "bids": [[format_fixed_places(p, 2), format_fixed_places(q, 3)] for p, q in truth.bids],
        "asks": [[format_fixed_places(p, 2), format_fixed_places(q, 3)] for p, q in truth.asks],
    }
    full = default.json()
    assert (len(full["bids"]), len(full["asks"])) == (30, 30)  # all levels: 30 < default 500
    assert (spot_path.status_code, spot_path.text) == (404, "Not Found\n")
    assert (unknown.status_code, unknown.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert sim.snapshot_requests("ETHUSDT") == 2


@pytest.mark.parametrize("suffix", list(USDM_DEPTH_STREAMS))
async def test_each_update_speed_bridges_to_the_true_book(
    sim: BinanceSimulator, suffix: str
) -> None:
    stream = f"btcusdt@{suffix}"
    tickers: dict[int, dict[str, Any]] = {}
    async with (
        connect(f"{sim.ws_url}/stream?streams={stream}/btcusdt@bookTicker") as ws,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):

        async def next_depth() -> dict[str, Any]:
            while (frame := await recv_json(ws))["stream"] != stream:
                tickers[frame["data"]["u"]] = frame["data"]
            return dict(frame["data"])

        buffered = [await next_depth()]
        response = await http.get("/fapi/v1/depth", params={"symbol": "BTCUSDT", "limit": 1000})
        book = UsdmClientBook(response.json())
        checked = 0

        def apply(event: dict[str, Any]) -> None:
            nonlocal checked
            book.apply(event)
            ticker = tickers.get(book.update_id)
            if book.bridged and ticker is not None:
                state = book.state()
                assert ticker_top(ticker) == (state.bids[0], state.asks[0])
                checked += 1

        for event in buffered:
            apply(event)
        while not book.bridged or not checked:
            apply(await next_depth())
        sim.pause()  # pushes every stream's pending window now
        truth = sim.book("BTCUSDT")
        while book.update_id < truth.update_id:
            apply(await next_depth())
    assert book.state() == truth


async def test_a_dropped_message_breaks_the_pu_chain_once(sim: BinanceSimulator) -> None:
    async with connect(sim.ws_url + "/ws/btcusdt@depth@100ms") as ws:
        events = [await recv_json(ws) for _ in range(2)]
        sim.inject(Fault.DROP, symbol="BTCUSDT")
        events += [await recv_json(ws) for _ in range(4)]
    breaks = [
        (previous["u"], event["pu"])
        for previous, event in zip(events, events[1:], strict=False)
        if event["pu"] != previous["u"]
    ]
    assert len(breaks) == 1
    last_seen, previous_of_next = breaks[0]
    assert previous_of_next > last_seen
    assert sim.faults == FaultCounters(dropped=1)
