"""``marketcast simulate``: every venue id served on loopback, its banner, its faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from app.cli import main
from app.commands.simulate import banner, simulate
from app.exceptions import ConfigError
from app.venues import VENUE_KINDS, simulated_venues
from feeds.simulator.faults import Fault
from feeds.simulator.venue import LoopbackVenue

GUARD_SECONDS = 10  # fail instead of hanging; never part of an assertion
ENDPOINTS = {
    "binance": {
        "websocket": "{ws}/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker",
        "REST depth": "{http}/api/v3/depth?symbol=BTCUSDT",
        "instrument metadata": "{http}/api/v3/exchangeInfo",
    },
    "binance-usdm": {
        "websocket": "{ws}/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker",
        "REST depth": "{http}/fapi/v1/depth?symbol=BTCUSDT",
        "instrument metadata": "{http}/fapi/v1/exchangeInfo",
    },
    "coinbase": {
        "websocket": "{ws}",
        "instrument metadata": "{http}/api/v3/brokerage/market/products",
    },
    "kraken": {"websocket": "{ws}/v2"},
    "okx": {
        "websocket": "{ws}/ws/v5/public",
        "instrument metadata": "{http}/api/v5/public/instruments?instType=SPOT",
    },
    "bybit": {
        "websocket": "{ws}/v5/public/spot",
        "instrument metadata": "{http}/v5/market/instruments-info?category=spot",
    },
    "bybit-linear": {
        "websocket": "{ws}/v5/public/linear",
        "instrument metadata": "{http}/v5/market/instruments-info?category=linear",
    },
}
"""What each venue's banner lists ({ws}/{http}: the simulator's base URLs)."""
CONFIG_URLS = {
    "binance": 'ws_url = "{ws}", rest_url = "{http}"',
    "binance-usdm": 'ws_url = "{ws}", rest_url = "{http}"',
    "coinbase": 'ws_url = "{ws}", rest_url = "{http}"',
    "kraken": 'ws_url = "{ws}/v2"',
    "okx": 'ws_url = "{ws}", rest_url = "{http}"',
    "bybit": 'ws_url = "{ws}", rest_url = "{http}"',
    "bybit-linear": 'ws_url = "{ws}", rest_url = "{http}"',
}
SYMBOLS = {
    "binance": "BTCUSDT, ETHUSDT, SOLUSDT, ETHBRL, BTCAUD, LUNAUSDT",
    "binance-usdm": "BTCUSDT, ETHUSDT, SOLUSDT",
    "coinbase": "BTC-USD, ETH-USD, SOL-USD",
    "kraken": "BTC/USD, ETH/USD, SOL/USD",
    "okx": "BTC-USDT, ETH-USDT, BTC-USDT-SWAP",
    "bybit": "BTCUSDT, ETHUSDT, SOLUSDT",
    "bybit-linear": "BTCUSDT, ETHUSDT, SOLUSDT",
}
FAULTS = {
    "binance": "disconnect, drop, malformed, shutdown, silence",
    "binance-usdm": "disconnect, drop, malformed, shutdown, silence",
    "coinbase": "disconnect, drop, error, malformed, silence",
    "kraken": "checksum, disconnect, drop, error, malformed, silence",
    "okx": "checksum, disconnect, drop, error, malformed, restart, shutdown, silence",
    "bybit": "disconnect, drop, error, malformed, restart, silence",
    "bybit-linear": "disconnect, drop, error, malformed, restart, silence",
}


@pytest.fixture(params=list(ENDPOINTS))
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, LoopbackVenue[Any]]]:
    """``simulate(venue)`` running with a malformed frame every 50 ms."""
    venue: str = request.param
    ready: asyncio.Future[LoopbackVenue[Any]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        simulate(
            venue,
            rate=500,
            seed=1,
            faults=[Fault.MALFORMED],
            fault_interval=0.05,
            on_ready=ready.set_result,
        )
    )
    simulator = await asyncio.wait_for(ready, GUARD_SECONDS)
    try:
        yield venue, simulator
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_every_venue_id_can_be_simulated() -> None:
    assert simulated_venues() == tuple(VENUE_KINDS) == tuple(ENDPOINTS)


async def test_the_banner_names_the_endpoints_and_faults_are_injected(
    served: tuple[str, LoopbackVenue[Any]],
) -> None:
    venue, simulator = served
    urls = {"ws": f"ws://127.0.0.1:{simulator.port}", "http": f"http://127.0.0.1:{simulator.port}"}
    endpoints = {name: url.format(**urls) for name, url in ENDPOINTS[venue].items()}
    assert banner(venue, simulator).splitlines() == [
        f"simulated {venue} venue, symbols {SYMBOLS[venue]}",
        *(f"  {name}: {url}" for name, url in endpoints.items()),
        f'  as a marketcast [[venues]] entry: id = "{venue}", ' + CONFIG_URLS[venue].format(**urls),
        f"  faults it can inject: {FAULTS[venue]}",
    ]
    async with connect(endpoints["websocket"]) as ws, asyncio.timeout(GUARD_SECONDS):
        while (await ws.recv()).encode() != simulator.malformed_frame:
            pass
    assert simulator.faults.malformed >= 1
    if "REST depth" in endpoints:
        async with httpx.AsyncClient() as http:
            response = await http.get(endpoints["REST depth"])
        assert response.status_code == 200
        assert list(response.json())[0] == "lastUpdateId"


@pytest.mark.parametrize(
    ("venue", "settings", "message"),
    [
        (
            "coinbase",
            {"faults": [Fault.CHECKSUM]},
            "coinbase: unsupported faults checksum "
            "(supported: disconnect, drop, error, malformed, silence)",
        ),
        (
            "okx",
            {"faults": [Fault.DROP], "fault_interval": 0},
            "okx: fault_interval must be positive",
        ),
        (
            "binance",
            {"rate": 0},
            "binance simulator: updates_per_second must be in (0, 10000.0]",
        ),
        ("sim", {}, "unknown venue kind 'sim'; known: " + ", ".join(VENUE_KINDS)),
    ],
)
async def test_bad_settings_are_refused_before_serving(
    venue: str, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        await simulate(venue, **settings)
    assert str(refused.value) == message


def test_the_command_reports_an_unsupported_fault(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--venue", "kraken", "--fault", "restart"]) == 2
    assert capsys.readouterr().err == (
        "marketcast: kraken: unsupported faults restart "
        "(supported: checksum, disconnect, drop, error, malformed, silence)\n"
    )
