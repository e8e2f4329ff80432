"""Bybit ``GET /v5/market/instruments-info?category=spot|linear`` (paged by ``cursor``),
sans-I/O::

    {"retCode":0,"retMsg":"OK","result":{"category":"spot","nextPageCursor":"",
      "list":[{"symbol":"BTCUSDT","baseCoin":"BTC","quoteCoin":"USDT",
               "status":"Trading","priceFilter":{"tickSize":"0.01"},
               "lotSizeFilter":{"basePrecision":"0.000001",..}}]}}

Linear contracts give their lot as ``lotSizeFilter.qtyStep`` and are ``BTC-USDT-PERP``
(``contractType`` ``LinearPerpetual``). ``status``: ``Trading`` trades, ``PreLaunch``
is halted, ``Delivering``/``Closed`` are delisted.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote as url_quote

from feeds.exceptions import MetadataError
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

REST_BASE = "https://api.bybit.com"

PAGE_LIMIT = 1000


def first_request(category: str) -> MetadataRequest:
    return MetadataRequest(f"/v5/market/instruments-info?category={category}&limit={PAGE_LIMIT}")


def parse_instruments_info(body: bytes | str) -> MetadataPage:
    """One page of ``instruments-info``, and the request of the next page. O(page)."""
    document = load_json(body, "bybit")
    if item(document, "retCode", "bybit") != 0:
        raise MetadataError(f"bybit metadata: {document.get('retCode')}: {document.get('retMsg')}")
    result = item(document, "result", "bybit")
    category = item(result, "category", "bybit")
    page = tuple(_instrument(entry) for entry in item(result, "list", "bybit"))
    cursor = result.get("nextPageCursor") or ""
    if not cursor:
        return MetadataPage(page)
    following = first_request(category).path + f"&cursor={url_quote(cursor)}"
    return MetadataPage(page, MetadataRequest(following))


def _instrument(entry: Any) -> InstrumentInfo:
    base, quote = item(entry, "baseCoin", "bybit"), item(entry, "quoteCoin", "bybit")
    lots = item(entry, "lotSizeFilter", "bybit")
    contract = entry.get("contractType")
    status = item(entry, "status", "bybit")
    return InstrumentInfo(
        symbol=item(entry, "symbol", "bybit"),
        canonical=perpetual(f"{base}-{quote}") if contract else f"{base}-{quote}",
        base=base,
        quote=quote,
        tick=exact(item(item(entry, "priceFilter", "bybit"), "tickSize", "bybit"), "tick", "bybit"),
        lot=exact(lots.get("qtyStep") or item(lots, "basePrecision", "bybit"), "lot", "bybit"),
        status=(
            TradingStatus.TRADING
            if status == "Trading"
            else TradingStatus.HALTED
            if status == "PreLaunch"
            else TradingStatus.DELISTED
        ),
        venue_status=status,
    )
