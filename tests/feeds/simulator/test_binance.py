"""The simulated Binance spot venue over real loopback websockets and HTTP.

Frames are checked against Binance's documented spot shapes
(binance-spot-api-docs, web-socket-streams.md) and the book a client rebuilds with
Binance's own snapshot-bridging rules is compared with the simulator's true book.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from book.fixed import format_fixed_places, parse_fixed
from feeds.simulator.binance import BinanceSimulator
from feeds.simulator.faults import Fault, FaultCounters
from feeds.simulator.market import DepthSnapshot, SimSymbol
from feeds.simulator.venue import run_simulator

BTC = SimSymbol(
    "BTCUSDT", price="61800.00", tick="0.01", lot="0.00001", mean_qty="0.25", max_gap_ticks=40
)
ETH = SimSymbol("ETHUSDT", price="2600.00", tick="0.01", lot="0.0001", mean_qty="3")
CLOCK_NS = 1_723_161_255_308_123_456
CLOCK_MS = 1_723_161_255_308
DECIMAL_8 = re.compile(r"^[0-9]+\.[0-9]{8}$")
DEPTH_KEYS = ["e", "E", "s", "U", "u", "b", "a"]
TICKER_KEYS = ["u", "s", "b", "B", "a", "A"]
BTC_STREAMS = "/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker"
GUARD_SECONDS = 10  # fail instead of hanging if frames stop; never part of an assertion


@pytest.fixture
async def sim() -> AsyncIterator[BinanceSimulator]:
    async with BinanceSimulator(
        symbols=(BTC, ETH),
        updates_per_second=1000,
        levels=30,
        seed=7,
        clock_ns=lambda: CLOCK_NS,
    ) as simulator:
        yield simulator


def _connect(url: str) -> connect:
    # Unbounded receive queue: a client that stops reading with a full queue stops
    # reading the socket too, and then cannot see the server's close frame.
    return connect(url, max_queue=None)


async def recv_json(ws: ClientConnection) -> Any:
    async with asyncio.timeout(GUARD_SECONDS):
        return orjson.loads(await ws.recv())


async def _depth_events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` depthUpdate payloads of a combined connection (others skipped)."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        frame = await recv_json(ws)
        if frame["data"].get("e") == "depthUpdate":
            events.append(frame["data"])
    return events


async def _reply(ws: ClientConnection, request: dict[str, Any]) -> Any:
    """Send a control request and return its reply, skipping market-data frames."""
    await ws.send(orjson.dumps(request).decode())
    while True:
        frame = await recv_json(ws)
        if "id" in frame:
            return frame


def _levels(levels: list[list[str]]) -> dict[int, int]:
    return {parse_fixed(px): parse_fixed(qty) for px, qty in levels}


def _is_binance_levels(levels: list[list[str]]) -> bool:
    return all(len(level) == 2 and all(DECIMAL_8.match(text) for text in level) for level in levels)


class BinanceClientBook:
    """A local book kept with Binance's documented rules (written here, independently)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.update_id: int = snapshot["lastUpdateId"]
        self.bids = _levels(snapshot["bids"])
        self.asks = _levels(snapshot["asks"])
        self.bridged = False

    def apply(self, event: dict[str, Any]) -> None:
        if not self.follows(event):
            return
        for side, levels in ((self.bids, event["b"]), (self.asks, event["a"])):
            for price, qty in _levels(levels).items():
                if qty:
                    side[price] = qty
                else:
                    side.pop(price, None)
        self.update_id = event["u"]

    def follows(self, event: dict[str, Any]) -> bool:
        """Spot's rules: whether to apply ``event`` (asserting it is in sequence)."""
        if event["u"] <= self.update_id:
            return False  # older than the book
        if not self.bridged:
            assert event["U"] <= self.update_id + 1 <= event["u"], "first event does not bridge"
            self.bridged = True
        else:
            assert event["U"] == self.update_id + 1, "gap in the diff-depth stream"
        return True

    def state(self) -> DepthSnapshot:
        return DepthSnapshot(
            self.update_id,
            tuple(sorted(self.bids.items(), reverse=True)),
            tuple(sorted(self.asks.items())),
        )


def ticker_top(ticker: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
    return (
        (parse_fixed(ticker["b"]), parse_fixed(ticker["B"])),
        (parse_fixed(ticker["a"]), parse_fixed(ticker["A"])),
    )


async def test_combined_stream_frames_have_binance_shape_and_continuous_ids(
    sim: BinanceSimulator,
) -> None:
    async with _connect(sim.ws_url + BTC_STREAMS) as ws:
        frames: list[dict[str, Any]] = []
        while sum(frame["stream"] == "btcusdt@depth@100ms" for frame in frames) < 4:
            frames.append(await recv_json(ws))
    assert all(list(frame) == ["stream", "data"] for frame in frames)
    depth = [f["data"] for f in frames if f["stream"] == "btcusdt@depth@100ms"]
    tickers = [f["data"] for f in frames if f["stream"] == "btcusdt@bookTicker"]
    assert len(depth) + len(tickers) == len(frames)
    for event in depth:
        assert list(event) == DEPTH_KEYS
        assert (event["e"], event["E"], event["s"]) == ("depthUpdate", CLOCK_MS, "BTCUSDT")
        assert event["U"] <= event["u"]
        assert event["b"] or event["a"]
        assert _is_binance_levels(event["b"]) and _is_binance_levels(event["a"])
    assert [e["U"] for e in depth[1:]] == [e["u"] + 1 for e in depth[:-1]]
    assert tickers, "no bookTicker while the market moved"
    for ticker in tickers:
        assert list(ticker) == TICKER_KEYS
        assert ticker["s"] == "BTCUSDT"
        assert all(DECIMAL_8.match(ticker[key]) for key in "bBaA")
        assert parse_fixed(ticker["b"]) < parse_fixed(ticker["a"])
    ticker_ids = [ticker["u"] for ticker in tickers]
    assert ticker_ids == sorted(set(ticker_ids))


async def test_raw_streams_send_bare_payloads(sim: BinanceSimulator) -> None:
    async with (
        _connect(sim.ws_url + "/ws/ethusdt@depth@100ms") as depth_ws,
        _connect(sim.ws_url + "/ws/ethusdt@bookTicker") as ticker_ws,
    ):
        first, second = await recv_json(depth_ws), await recv_json(depth_ws)
        ticker = await recv_json(ticker_ws)
    assert list(first) == list(second) == DEPTH_KEYS
    assert (first["e"], first["s"], second["U"]) == ("depthUpdate", "ETHUSDT", first["u"] + 1)
    assert list(ticker) == TICKER_KEYS
    assert ticker["s"] == "ETHUSDT"


async def test_snapshot_bridging_rebuilds_the_true_book_and_book_ticker_matches(
    sim: BinanceSimulator,
) -> None:
    tickers: dict[int, dict[str, Any]] = {}
    last_ticker: dict[str, Any] | None = None
    async with _connect(sim.ws_url + BTC_STREAMS) as ws, httpx.AsyncClient() as http:

        async def next_depth() -> dict[str, Any]:
            nonlocal last_ticker
            while True:
                frame = await recv_json(ws)
                if frame["stream"] == "btcusdt@bookTicker":
                    last_ticker = tickers[frame["data"]["u"]] = frame["data"]
                else:
                    return dict(frame["data"])

        buffered = [await next_depth(), await next_depth()]
        response = await http.get(
            sim.rest_url + "/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 1000}
        )
        assert response.status_code == 200
        snapshot = response.json()
        assert snapshot["lastUpdateId"] >= buffered[0]["U"]
        book = BinanceClientBook(snapshot)
        applied_after_snapshot = 0

        def apply(event: dict[str, Any]) -> None:
            nonlocal applied_after_snapshot
            book.apply(event)
            if book.bridged:
                applied_after_snapshot += 1
            ticker = tickers.get(book.update_id)
            if ticker is not None:  # the bookTicker of the step that ended this message
                state = book.state()
                assert ticker_top(ticker) == (state.bids[0], state.asks[0])

        for event in buffered:
            apply(event)
        while applied_after_snapshot < 4:
            apply(await next_depth())
        sim.pause()
        truth = sim.book("BTCUSDT")
        while book.update_id < truth.update_id:
            apply(await next_depth())
    assert book.state() == truth
    assert last_ticker is not None
    assert ticker_top(last_ticker) == (truth.bids[0], truth.asks[0])
    assert last_ticker["u"] <= truth.update_id
    assert sim.snapshot_requests("BTCUSDT") == 1


async def test_one_second_depth_stream_bridges_to_the_true_book(
    sim: BinanceSimulator,
) -> None:
    async with (
        _connect(sim.ws_url + "/stream?streams=btcusdt@depth/btcusdt@bookTicker") as ws,
        httpx.AsyncClient(base_url=sim.rest_url) as http,
    ):
        depth: list[dict[str, Any]] = []

        async def next_ticker() -> dict[str, Any]:
            while (frame := await recv_json(ws))["stream"] != "btcusdt@bookTicker":
                depth.append(frame["data"])
            return dict(frame["data"])

        await next_ticker()
        response = await http.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 50})
        book = BinanceClientBook(response.json())
        while (await next_ticker())["u"] <= book.update_id:
            pass
        sim.pause()  # pushes the pending one-second window now
        truth = sim.book("BTCUSDT")
        while not depth or depth[-1]["u"] < truth.update_id:
            frame = await recv_json(ws)
            if frame["stream"] == "btcusdt@depth":
                depth.append(frame["data"])
    for event in depth:
        assert list(event) == DEPTH_KEYS
        book.apply(event)
    assert book.bridged
    assert book.state() == truth


async def test_rest_depth_snapshot_is_the_true_book(sim: BinanceSimulator) -> None:
    sim.pause()
    truth = sim.book("ETHUSDT", 5)
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        response = await http.get("/api/v3/depth", params={"symbol": "ETHUSDT", "limit": "5"})
        default = await http.get("/api/v3/depth", params={"symbol": "ETHUSDT"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
    assert response.json() == {
        "lastUpdateId": truth.update_id,
        "bids": [[format_fixed_places(p, 8), format_fixed_places(q, 8)] for p, q in truth.bids],
        "asks": [[format_fixed_places(p, 8), format_fixed_places(q, 8)] for p, q in truth.asks],
    }
    assert list(response.json()) == ["lastUpdateId", "bids", "asks"]
    full = default.json()
    assert (len(full["bids"]), len(full["asks"])) == (30, 30)  # all levels: 30 < default 100
    assert sim.snapshot_requests("ETHUSDT") == 2
    assert sim.snapshot_requests("BTCUSDT") == 0


@pytest.mark.parametrize(
    ("target", "status", "body"),
    [
        ("/api/v3/depth?symbol=DOGEUSDT", 400, {"code": -1121, "msg": "Invalid symbol."}),
        ("/api/v3/depth?symbol=btcusdt", 400, {"code": -1121, "msg": "Invalid symbol."}),
        (
            "/api/v3/depth",
            400,
            {
                "code": -1102,
                "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            },
        ),
        (
            "/api/v3/depth?symbol=BTCUSDT&limit=ten",
            400,
            {
                "code": -1100,
                "msg": "Illegal characters found in parameter 'limit'; "
                "legal range is '^[0-9]{1,20}$'.",
            },
        ),
    ],
)
async def test_rest_errors_are_binance_errors(
    sim: BinanceSimulator, target: str, status: int, body: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        response = await http.get(target)
    assert (response.status_code, response.json()) == (status, body)
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
    assert sim.snapshot_requests("BTCUSDT") == 0


async def test_unknown_http_path_is_404(sim: BinanceSimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        response = await http.get("/api/v3/ticker")
    assert (response.status_code, response.text) == (404, "Not Found\n")


async def test_control_messages_subscribe_unsubscribe_list_and_combined(
    sim: BinanceSimulator,
) -> None:
    async with _connect(sim.ws_url + "/ws") as ws:
        subscribe = {"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1}
        assert await _reply(ws, subscribe) == {"result": None, "id": 1}
        event = await recv_json(ws)
        assert list(event) == DEPTH_KEYS
        listing = await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert listing == {"result": ["btcusdt@depth@100ms"], "id": 2}

        unsubscribe = {"method": "UNSUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 3}
        assert await _reply(ws, unsubscribe) == {"result": None, "id": 3}
        subscribe = {"method": "SUBSCRIBE", "params": ["ethusdt@bookTicker"], "id": "four"}
        assert await _reply(ws, subscribe) == {"result": None, "id": "four"}
        after = [await recv_json(ws) for _ in range(5)]
        assert [(list(t), t["s"]) for t in after] == [(TICKER_KEYS, "ETHUSDT")] * 5

        combined = {"method": "SET_PROPERTY", "params": ["combined", True], "id": 5}
        assert await _reply(ws, combined) == {"result": None, "id": 5}
        wrapped = await recv_json(ws)
        assert (list(wrapped), wrapped["stream"]) == (["stream", "data"], "ethusdt@bookTicker")
        assert await _reply(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 6}) == {
            "result": True,
            "id": 6,
        }
        listing = await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 7})
        assert listing == {"result": ["ethusdt@bookTicker"], "id": 7}

        await ws.send("{not json")
        while "code" not in (error := await recv_json(ws)):
            pass
        assert error == {
            "code": 3,
            "msg": "Invalid JSON: expected value at line 1 column 1",
            "id": None,
        }
        unknown = await _reply(ws, {"method": "SUBSCRIBE_ALL", "params": [], "id": 8})
        assert (unknown["code"], unknown["id"]) == (2, 8)
        bad_property = {"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 9}
        assert await _reply(ws, bad_property) == {
            "code": 1,
            "msg": "Invalid value type: expected Boolean",
            "id": 9,
        }


async def test_drop_next_makes_one_gap(sim: BinanceSimulator) -> None:
    async with _connect(sim.ws_url + BTC_STREAMS) as ws:
        before = await _depth_events(ws, 2)
        sim.drop_next("BTCUSDT")
        after = await _depth_events(ws, 4)
    events = before + after
    gaps = [
        (previous["u"], event["U"])
        for previous, event in zip(events, events[1:], strict=False)
        if event["U"] != previous["u"] + 1
    ]
    assert len(gaps) == 1
    last_seen, resumed_at = gaps[0]
    assert resumed_at > last_seen + 1
    assert sim.faults == FaultCounters(dropped=1)


async def test_disconnect_all_aborts_every_client_and_reconnect_works(
    sim: BinanceSimulator,
) -> None:
    async with (
        _connect(sim.ws_url + BTC_STREAMS) as combined,
        _connect(sim.ws_url + "/ws/ethusdt@bookTicker") as raw,
    ):
        await recv_json(combined)
        await recv_json(raw)
        assert sim.clients == 2
        sim.disconnect_all()
        for ws in (combined, raw):
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    await recv_json(ws)
            assert closed.value.rcvd is None  # no close frame: an abrupt disconnect
    assert sim.faults == FaultCounters(disconnected=2)
    assert sim.clients == 0
    async with _connect(sim.ws_url + BTC_STREAMS) as again:
        assert (await _depth_events(again, 1))[0]["s"] == "BTCUSDT"
    assert sim.connections_accepted == 3


async def test_go_silent_keeps_the_connection_and_loses_the_data(
    sim: BinanceSimulator,
) -> None:
    async with _connect(sim.ws_url + BTC_STREAMS) as ws:
        (previous,) = await _depth_events(ws, 1)
        sim.go_silent(0.35)
        silenced_at = sim.book("BTCUSDT").update_id
        # Still connected and answering while silent.
        listing = await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert listing == {"result": ["btcusdt@depth@100ms", "btcusdt@bookTicker"], "id": 1}
        while True:
            (event,) = await _depth_events(ws, 1)
            if event["u"] > silenced_at:
                break
            previous = event  # pushed before the silence began
    assert event["U"] > previous["u"] + 1
    assert event["U"] > silenced_at + 1
    assert sim.faults == FaultCounters(silences=1)


async def test_send_malformed_sends_one_unparseable_text_frame(
    sim: BinanceSimulator,
) -> None:
    async with _connect(sim.ws_url + BTC_STREAMS) as ws:
        await recv_json(ws)
        sim.send_malformed()
        async with asyncio.timeout(GUARD_SECONDS):
            while True:
                frame = await ws.recv()
                assert isinstance(frame, str)
                try:
                    orjson.loads(frame)
                except orjson.JSONDecodeError:
                    break
        follow_up = await recv_json(ws)
    assert frame.startswith('{"stream"')
    assert list(follow_up) == ["stream", "data"]  # the stream goes on
    assert sim.faults == FaultCounters(malformed=1)


async def test_server_shutdown_event_reaches_every_client_unwrapped(
    sim: BinanceSimulator,
) -> None:
    async with (
        _connect(sim.ws_url + BTC_STREAMS) as combined,
        _connect(sim.ws_url + "/ws/btcusdt@bookTicker") as raw,
    ):
        await recv_json(combined)
        await recv_json(raw)
        sim.send_server_shutdown()
        for ws in (combined, raw):
            while (frame := await recv_json(ws)).get("e") != "serverShutdown":
                pass
            assert frame == {"e": "serverShutdown", "E": CLOCK_MS}
    assert sim.faults == FaultCounters(shutdown_notices=2)


async def test_pause_freezes_the_book_and_resume_restarts_it(sim: BinanceSimulator) -> None:
    sim.pause()
    frozen = sim.book("BTCUSDT")
    await asyncio.sleep(0.05)
    assert sim.book("BTCUSDT") == frozen
    sim.resume()
    async with _connect(sim.ws_url + BTC_STREAMS) as ws:
        (event,) = await _depth_events(ws, 1)
    assert event["u"] > frozen.update_id


async def test_unknown_streams_are_accepted_and_silent(sim: BinanceSimulator) -> None:
    async with _connect(sim.ws_url + "/stream?streams=dogeusdt@depth/btcusdt@depth@100ms") as ws:
        frames = [await recv_json(ws) for _ in range(3)]
        listing = await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
    assert {frame["stream"] for frame in frames} == {"btcusdt@depth@100ms"}
    assert listing == {"result": ["dogeusdt@depth", "btcusdt@depth@100ms"], "id": 1}


async def test_inject_dispatches_each_fault(sim: BinanceSimulator) -> None:
    streams = ("btcusdt@depth@100ms", "ethusdt@depth@100ms")
    async with _connect(sim.ws_url + "/stream?streams=" + "/".join(streams)) as ws:
        last_u: dict[str, int] = {}
        while len(last_u) < 2:  # both streams flowing
            frame = await recv_json(ws)
            last_u[frame["stream"]] = frame["data"]["u"]
        sim.inject(Fault.DROP)
        gapped: set[str] = set()
        while gapped != set(streams):
            frame = await recv_json(ws)
            stream, event = frame["stream"], frame["data"]
            if event["U"] != last_u[stream] + 1:
                gapped.add(stream)
            last_u[stream] = event["u"]
        assert sim.faults == FaultCounters(dropped=2)
        sim.inject(Fault.SILENCE, silence_seconds=0.0)
        sim.inject(Fault.MALFORMED)
        sim.inject(Fault.SHUTDOWN)
        sim.inject(Fault.DISCONNECT)
        with pytest.raises(ConnectionClosedError):
            while True:
                await ws.recv()
    assert sim.faults == FaultCounters(
        dropped=2, disconnected=1, silences=1, malformed=1, shutdown_notices=1
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"updates_per_second": 0},
        {"updates_per_second": 20_000},
        {"symbols": ()},
        {"symbols": (BTC, BTC)},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BinanceSimulator(**kwargs)


async def test_run_simulator_serves_injects_faults_and_stops_on_cancel() -> None:
    ready: asyncio.Future[BinanceSimulator] = asyncio.get_running_loop().create_future()
    runner = asyncio.create_task(
        run_simulator(
            BinanceSimulator(symbols=(BTC,), updates_per_second=500, levels=10),
            faults=(Fault.MALFORMED, Fault.SHUTDOWN),
            fault_interval=0.05,
            on_ready=ready.set_result,
        )
    )
    async with asyncio.timeout(GUARD_SECONDS):
        simulator = await ready
    async with _connect(simulator.ws_url + "/ws/btcusdt@bookTicker") as ws:
        shutdown_seen = False
        async with asyncio.timeout(GUARD_SECONDS):
            while not shutdown_seen:
                frame = await ws.recv()
                shutdown_seen = isinstance(frame, str) and frame.startswith('{"e":"serverShutdown"')
    assert simulator.faults.malformed >= 1
    assert simulator.faults.shutdown_notices >= 1
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    with pytest.raises(OSError):
        async with _connect(simulator.ws_url + "/ws"):
            pass
