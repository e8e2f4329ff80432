"""Configured instruments checked against venue metadata; patterns; halted state."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from app.exceptions import ConfigError
from app.instruments import ResolvedVenue, resolve
from app.runtime import serve
from app.settings import Settings, VenueSettings, settings_from_dict
from app.venues import build_simulator
from book.status import InstrumentState
from feeds.metadata import InstrumentInfo, TradingStatus
from tests.app.serving import running
from tests.waiting import eventually


def info(
    symbol: str, canonical: str, status: TradingStatus = TradingStatus.TRADING
) -> InstrumentInfo:
    base, quote = canonical.split("-")[:2]
    word = {"trading": "TRADING", "halted": "BREAK", "delisted": "DELIVERED"}[status]
    return InstrumentInfo(symbol, canonical, base, quote, Decimal("0.01"), Decimal(1), status, word)


LISTED = [
    info("BTCUSDT", "BTC-USDT"),
    info("ETHUSDT", "ETH-USDT"),
    info("ETHBRL", "ETH-BRL"),
    info("ADARUB", "ADA-RUB"),
    info("LUNAUSDT", "LUNA-USDT", TradingStatus.HALTED),
]


def venue(symbols: list[str], **extra: object) -> VenueSettings:
    settings = settings_from_dict({"venues": [{"id": "binance", "symbols": symbols, **extra}]})
    return settings.venues[0]


def test_configured_instruments_are_kept_and_a_halted_one_gets_its_reason() -> None:
    resolved = resolve(venue(["BTC-USDT", "ADA-RUB", "LUNA-USDT"]), LISTED)
    assert resolved.venue.symbols == {"BTC-USDT": "BTCUSDT", "ADA-RUB": "ADARUB"}
    assert resolved.halted == {"LUNA-USDT": "halted: the venue says BREAK"}


def test_an_instrument_the_venue_does_not_list_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="binance:DOGE-USDT is not an instrument it lists"):
        resolve(venue(["BTC-USDT", "DOGE-USDT"]), LISTED)


def test_patterns_select_every_trading_match_within_max_instruments() -> None:
    selected = venue(["binance:*-USDT", "ETH-*"])
    assert selected.patterns == ("*-USDT", "ETH-*") and selected.symbols == {}
    assert resolve(selected, LISTED).venue.symbols == {
        "BTC-USDT": "BTCUSDT",
        "ETH-USDT": "ETHUSDT",
        "ETH-BRL": "ETHBRL",
    }
    with pytest.raises(ConfigError, match="3 instruments selected, more than max_instruments = 2"):
        resolve(venue(["*-USDT", "ETH-*"], max_instruments=2), LISTED)
    with pytest.raises(ConfigError, match="pattern '\\*-EUR' selects no instrument"):
        resolve(venue(["*-EUR"]), LISTED)


async def test_the_server_checks_its_venues_metadata_at_start(tmp_path: Path) -> None:
    settings = Settings.demo().with_port(0).with_storage_path(str(tmp_path / "m.db"))
    binance = venue(["BTC-USDT", "LUNA-USDT", "*-BRL", "*-AUD"], simulate=True)
    settings = replace(settings, venues=(binance,))
    async with running(settings) as server:
        live = ["binance:BTC-USDT", "binance:ETH-BRL", "binance:BTC-AUD"]
        await eventually(lambda: all(map(server.registry.is_live, live)), "listed pairs live")
        halted = server.registry.status("binance:LUNA-USDT")
        assert halted is not None
        assert (halted.state, halted.reason) == (
            InstrumentState.HALTED,
            "halted: the venue says BREAK",
        )
    async with build_simulator("binance", updates_per_second=10, seed=1) as simulator:
        urls = {"ws_url": simulator.ws_url, "rest_url": simulator.rest_url}
        unknown = replace(settings, venues=(venue(["BTC-USDT", "DOGE-USDT"], **urls),))
        with pytest.raises(ConfigError, match="binance:DOGE-USDT is not an instrument it lists"):
            await asyncio.wait_for(serve(unknown), 30)


def test_resolved_venue_defaults() -> None:
    assert ResolvedVenue(venue(["BTC-USDT"])).halted == {}
