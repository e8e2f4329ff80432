"""Instrument metadata: each simulator serves its venue's format, each parser reads it
back to exactly what the simulator lists; real venue samples parse too."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.instruments import fetch_metadata
from app.settings import VenueSettings
from app.venues import build_simulator, simulator_endpoints
from feeds.binance.metadata import parse_exchange_info
from feeds.bybit.metadata import parse_instruments_info
from feeds.coinbase.metadata import parse_products
from feeds.exceptions import MetadataError
from feeds.kraken.metadata import parse_instrument_frame
from feeds.metadata import InstrumentInfo, MetadataRequest, TradingStatus
from feeds.okx.metadata import parse_instruments
from feeds.simulator.catalog import LISTINGS, SPELLING

VENUES = list(LISTINGS)


def listed(venue: str) -> list[InstrumentInfo]:
    """What the simulator of ``venue`` must say it lists (from the catalog table)."""
    return [
        InstrumentInfo(
            symbol=SPELLING[venue](listing.canonical),
            canonical=listing.canonical,
            base=listing.canonical.split("-")[0],
            quote=listing.canonical.split("-")[1],
            tick=Decimal(listing.tick).normalize(),
            lot=Decimal(listing.lot).normalize(),
            status=listing.status,
            venue_status=_venue_status(venue, listing.status),
        )
        for listing in LISTINGS[venue]
    ]


def _venue_status(venue: str, status: TradingStatus) -> str:
    trading = status is TradingStatus.TRADING
    words = {
        "binance": ("TRADING", "BREAK"),
        "binance-usdm": ("TRADING", "SETTLING"),
        "okx": ("live", "suspend"),
        "bybit": ("Trading", "PreLaunch"),
        "bybit-linear": ("Trading", "PreLaunch"),
        "coinbase": ("online", "online,trading_disabled"),
        "kraken": ("online", "maintenance"),
    }
    return words[venue][0 if trading else 1]


@pytest.mark.parametrize("venue", VENUES)
async def test_a_simulator_serves_its_venue_metadata_and_the_parser_reads_it_back(
    venue: str,
) -> None:
    settings = VenueSettings(id=venue, symbols={}, simulate=True)
    simulator = build_simulator(venue, updates_per_second=10, seed=1)
    async with simulator, httpx.AsyncClient() as http:
        ws_url, rest_url = simulator_endpoints(settings, simulator)
        frames: list[Any] = []
        instruments = await fetch_metadata(
            settings, ws_url, rest_url, http=http, recorder=frames.append
        )
    assert sorted(instruments, key=str) == sorted(listed(venue), key=str)
    assert frames and all(frame.venue == venue for frame in frames)


async def test_bybit_pages_follow_the_cursor() -> None:
    settings = VenueSettings(id="bybit", symbols={}, simulate=True)
    simulator = build_simulator("bybit", updates_per_second=10, seed=1)
    async with simulator, httpx.AsyncClient() as http:
        first = await http.get(
            f"{simulator.rest_url}/v5/market/instruments-info?category=spot&limit=2"
        )
        page = parse_instruments_info(first.content)
        assert [info.symbol for info in page.instruments] == ["BTCUSDT", "ETHUSDT"]
        assert page.next == MetadataRequest(
            "/v5/market/instruments-info?category=spot&limit=1000&cursor=2"
        )
        whole = await fetch_metadata(settings, None, simulator.rest_url, http=http)
    assert [info.symbol for info in whole] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def test_real_binance_spot_and_usdm_exchange_info() -> None:
    spot = b"""{"timezone":"UTC","serverTime":1723161255308,"rateLimits":[],"exchangeFilters":[],
    "symbols":[{"symbol":"ETHBRL","status":"TRADING","baseAsset":"ETH","baseAssetPrecision":8,
    "quoteAsset":"BRL","quotePrecision":8,"quoteAssetPrecision":8,"filters":[
    {"filterType":"PRICE_FILTER","minPrice":"1.00000000","maxPrice":"9999999.00000000",
    "tickSize":"1.00000000"},{"filterType":"LOT_SIZE","minQty":"0.00010000",
    "maxQty":"900000.00000000","stepSize":"0.00010000"}]},
    {"symbol":"ADARUB","status":"BREAK","baseAsset":"ADA","quoteAsset":"RUB","filters":[
    {"filterType":"PRICE_FILTER","tickSize":"0.01000000"},
    {"filterType":"LOT_SIZE","stepSize":"0.10000000"}]}]}"""
    usdm = b"""{"symbols":[{"symbol":"BTCUSDT","pair":"BTCUSDT","contractType":"PERPETUAL",
    "status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT","filters":[
    {"filterType":"PRICE_FILTER","tickSize":"0.10"},{"filterType":"LOT_SIZE","stepSize":"0.001"}]},
    {"symbol":"BTCUSDT_250328","pair":"BTCUSDT","contractType":"CURRENT_QUARTER",
    "status":"DELIVERING","baseAsset":"BTC","quoteAsset":"USDT","filters":[
    {"filterType":"PRICE_FILTER","tickSize":"0.1"},{"filterType":"LOT_SIZE","stepSize":"0.001"}]}]}"""
    assert parse_exchange_info(spot).instruments == (
        InstrumentInfo(
            "ETHBRL",
            "ETH-BRL",
            "ETH",
            "BRL",
            Decimal(1),
            Decimal("0.0001"),
            TradingStatus.TRADING,
            "TRADING",
        ),
        InstrumentInfo(
            "ADARUB",
            "ADA-RUB",
            "ADA",
            "RUB",
            Decimal("0.01"),
            Decimal("0.1"),
            TradingStatus.HALTED,
            "BREAK",
        ),
    )
    assert [
        (info.canonical, info.tick, info.status) for info in parse_exchange_info(usdm).instruments
    ] == [
        ("BTC-USDT-PERP", Decimal("0.1"), TradingStatus.TRADING),
        ("BTC-USDT-250328", Decimal("0.1"), TradingStatus.DELISTED),
    ]


def test_real_okx_bybit_coinbase_and_kraken_samples() -> None:
    okx = b"""{"code":"0","msg":"","data":[{"instType":"SWAP","instId":"ETH-USDT-SWAP",
    "uly":"ETH-USDT","instFamily":"ETH-USDT","baseCcy":"","quoteCcy":"","settleCcy":"USDT",
    "ctVal":"0.1","tickSz":"0.01","lotSz":"1","state":"live"}]}"""
    bybit = b"""{"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[
    {"symbol":"10000LADYSUSDT","contractType":"LinearPerpetual","status":"Closed",
    "baseCoin":"10000LADYS","quoteCoin":"USDT","priceFilter":{"tickSize":"0.0000001"},
    "lotSizeFilter":{"qtyStep":"100","minOrderQty":"100"}}],"nextPageCursor":""}}"""
    coinbase = b"""{"products":[{"product_id":"BTC-EUR","base_currency_id":"BTC",
    "quote_currency_id":"EUR","quote_increment":"0.01","base_increment":"0.00000001",
    "status":"online","trading_disabled":false,"cancel_only":true}],"num_products":1}"""
    kraken = (
        b'{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[{"symbol":'
        b'"XBT/AUD","base":"XBT","quote":"AUD","status":"online","price_increment":0.1,'
        b'"qty_increment":0.00000001,"price_precision":1,"qty_precision":8}]}}'
    )
    parsed = [
        *parse_instruments(okx).instruments,
        *parse_instruments_info(bybit).instruments,
        *parse_products(coinbase).instruments,
        *(parse_instrument_frame(kraken) or pytest.fail("not a snapshot")).instruments,
    ]
    assert [(i.symbol, i.canonical, i.base, i.quote, i.tick, i.lot, i.status) for i in parsed] == [
        ("ETH-USDT-SWAP", "ETH-USDT-PERP", "ETH", "USDT", Decimal("0.01"), Decimal(1), "trading"),
        (
            "10000LADYSUSDT",
            "10000LADYS-USDT-PERP",
            "10000LADYS",
            "USDT",
            Decimal("1E-7"),
            Decimal(100),
            "delisted",
        ),
        ("BTC-EUR", "BTC-EUR", "BTC", "EUR", Decimal("0.01"), Decimal("1E-8"), "halted"),
        ("XBT/AUD", "XBT-AUD", "XBT", "AUD", Decimal("0.1"), Decimal("1E-8"), "trading"),
    ]
    assert parse_instrument_frame(b'{"channel":"heartbeat"}') is None


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (parse_exchange_info, b"not json"),
        (parse_exchange_info, b'{"symbols":[{"symbol":"X"}]}'),
        (parse_instruments, b'{"code":"50011","msg":"Too Many Requests","data":[]}'),
        (parse_instruments_info, b'{"retCode":10006,"retMsg":"Too many visits!"}'),
        (
            parse_products,
            b'{"products":[{"product_id":"A-B","base_currency_id":"A",'
            b'"quote_currency_id":"B","quote_increment":"0","base_increment":"1","status":"online"}]}',
        ),
    ],
)
def test_a_response_that_is_not_metadata_is_a_metadata_error(parse: Any, body: bytes) -> None:
    with pytest.raises(MetadataError):
        parse(body)
