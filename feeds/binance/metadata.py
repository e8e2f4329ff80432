"""Binance ``exchangeInfo``: spot (``GET /api/v3/exchangeInfo``, weight 20) and USD-M
(``GET /fapi/v1/exchangeInfo``, weight 1), sans-I/O.

One response lists every symbol::

    {"timezone":"UTC","serverTime":1723161255308,"rateLimits":[..],"symbols":[
      {"symbol":"BTCUSDT","status":"TRADING","baseAsset":"BTC","quoteAsset":"USDT",
       "filters":[{"filterType":"PRICE_FILTER","tickSize":"0.01000000",..},
                  {"filterType":"LOT_SIZE","stepSize":"0.00001000",..}],..}]}

USD-M symbols add ``"contractType":"PERPETUAL"`` (or a delivery month) and ``"pair"``;
a perpetual is ``BTC-USDT-PERP``, a delivery contract ``BTC-USDT-250328``. Spot status
``TRADING`` trades, ``BREAK``/``HALT``/``PRE_TRADING``/``POST_TRADING``/``END_OF_DAY``/
``AUCTION_MATCH`` are halted; USD-M ``PENDING_TRADING``/``PRE_SETTLE``/``SETTLING`` are
halted, ``PRE_DELIVERING``/``DELIVERING``/``DELIVERED``/``CLOSE`` delisted.
"""

from __future__ import annotations

from typing import Any

from feeds.metadata import (
    InstrumentInfo,
    MetadataPage,
    MetadataRequest,
    TradingStatus,
    exact,
    item,
    load_json,
    perpetual,
)

SPOT_REQUEST = MetadataRequest("/api/v3/exchangeInfo", weight=20)
USDM_REQUEST = MetadataRequest("/fapi/v1/exchangeInfo", weight=1)
_DELISTED = frozenset({"PRE_DELIVERING", "DELIVERING", "DELIVERED", "CLOSE"})


def parse_exchange_info(body: bytes | str) -> MetadataPage:
    """Every symbol of a spot or USD-M ``exchangeInfo`` response. O(symbols)."""
    document = load_json(body, "binance")
    return MetadataPage(tuple(_instrument(entry) for entry in item(document, "symbols", "binance")))


def _instrument(entry: Any) -> InstrumentInfo:
    symbol = item(entry, "symbol", "binance")
    base, quote = item(entry, "baseAsset", "binance"), item(entry, "quoteAsset", "binance")
    filters = {f.get("filterType"): f for f in item(entry, "filters", "binance")}
    status = item(entry, "status", "binance")
    canonical = f"{base}-{quote}"
    contract = entry.get("contractType")
    if contract == "PERPETUAL":
        canonical = perpetual(canonical)
    elif contract:
        canonical = f"{canonical}-{symbol.rpartition('_')[2]}"
    return InstrumentInfo(
        symbol=symbol,
        canonical=canonical,
        base=base,
        quote=quote,
        tick=exact(item(filters.get("PRICE_FILTER"), "tickSize", "binance"), "tick", "binance"),
        lot=exact(item(filters.get("LOT_SIZE"), "stepSize", "binance"), "lot", "binance"),
        status=(
            TradingStatus.TRADING
            if status == "TRADING"
            else TradingStatus.DELISTED
            if status in _DELISTED
            else TradingStatus.HALTED
        ),
        venue_status=status,
    )
