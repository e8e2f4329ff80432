"""OKX ``GET /api/v5/public/instruments?instType=SPOT|SWAP`` (20 requests per 2 s per
IP), sans-I/O::

    {"code":"0","msg":"","data":[{"instType":"SPOT","instId":"BTC-USDT","baseCcy":"BTC",
      "quoteCcy":"USDT","tickSz":"0.1","lotSz":"0.00000001","state":"live",..}]}

A swap names its assets in ``uly``/``instFamily`` (``BTC-USDT``) and is
``BTC-USDT-PERP``. ``state``: ``live`` trades, ``suspend``/``preopen``/``test`` are
halted; an instrument OKX delisted is no longer listed.
"""

from __future__ import annotations

from typing import Any

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

REST_BASE = "https://www.okx.com"

INSTRUMENT_TYPES = ("SPOT", "SWAP")
REQUESTS = tuple(
    MetadataRequest(f"/api/v5/public/instruments?instType={kind}") for kind in INSTRUMENT_TYPES
)


def parse_instruments(body: bytes | str) -> MetadataPage:
    """Every instrument of one ``public/instruments`` response. O(instruments)."""
    document = load_json(body, "okx")
    if str(item(document, "code", "okx")) != "0":
        raise MetadataError(f"okx metadata: error {document.get('code')}: {document.get('msg')}")
    return MetadataPage(tuple(_instrument(entry) for entry in item(document, "data", "okx")))


def _instrument(entry: Any) -> InstrumentInfo:
    inst_id = item(entry, "instId", "okx")
    kind = item(entry, "instType", "okx")
    if kind == "SPOT":
        base, quote = item(entry, "baseCcy", "okx"), item(entry, "quoteCcy", "okx")
        canonical = inst_id
    else:
        family = entry.get("instFamily") or item(entry, "uly", "okx")
        base, _, quote = family.partition("-")
        canonical = perpetual(family) if kind == "SWAP" else inst_id
    state = item(entry, "state", "okx")
    return InstrumentInfo(
        symbol=inst_id,
        canonical=canonical,
        base=base,
        quote=quote,
        tick=exact(item(entry, "tickSz", "okx"), "tickSz", "okx"),
        lot=exact(item(entry, "lotSz", "okx"), "lotSz", "okx"),
        status=TradingStatus.TRADING if state == "live" else TradingStatus.HALTED,
        venue_status=state,
    )
