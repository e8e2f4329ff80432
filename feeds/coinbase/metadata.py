"""Coinbase Advanced Trade ``GET /api/v3/brokerage/market/products`` (public), sans-I/O::

    {"products":[{"product_id":"BTC-USD","base_currency_id":"BTC",
      "quote_currency_id":"USD","quote_increment":"0.01","price_increment":"0.01",
      "base_increment":"0.00000001","status":"online","trading_disabled":false,
      "cancel_only":false,"is_disabled":false,"product_type":"SPOT",..}],
     "num_products":1}

``status`` ``online`` trades unless ``trading_disabled``/``cancel_only``/``is_disabled``
(halted); ``delisted`` is delisted, anything else halted.
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
)

REST_BASE = "https://api.coinbase.com"

REQUEST = MetadataRequest("/api/v3/brokerage/market/products?product_type=SPOT")


def parse_products(body: bytes | str) -> MetadataPage:
    """Every product of one response. O(products)."""
    document = load_json(body, "coinbase")
    return MetadataPage(
        tuple(_instrument(entry) for entry in item(document, "products", "coinbase"))
    )


def _instrument(entry: Any) -> InstrumentInfo:
    product = item(entry, "product_id", "coinbase")
    status = item(entry, "status", "coinbase")
    blocked = [
        flag for flag in ("trading_disabled", "cancel_only", "is_disabled") if entry.get(flag)
    ]
    if status == "online" and not blocked:
        trading = TradingStatus.TRADING
    elif status == "delisted":
        trading = TradingStatus.DELISTED
    else:
        trading = TradingStatus.HALTED
    tick = entry.get("price_increment") or item(entry, "quote_increment", "coinbase")
    return InstrumentInfo(
        symbol=product,
        canonical=product,
        base=item(entry, "base_currency_id", "coinbase"),
        quote=item(entry, "quote_currency_id", "coinbase"),
        tick=exact(tick, "price_increment", "coinbase"),
        lot=exact(item(entry, "base_increment", "coinbase"), "base_increment", "coinbase"),
        status=trading,
        venue_status=",".join([status, *blocked]),
    )
