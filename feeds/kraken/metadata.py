"""Kraken websocket v2 ``instrument`` channel, sans-I/O: the request to send and the
snapshot it answers with::

    {"method":"subscribe","params":{"channel":"instrument","snapshot":true}}
    {"channel":"instrument","type":"snapshot","data":{"assets":[..],"pairs":[
      {"symbol":"BTC/USD","base":"BTC","quote":"USD","status":"online",
       "price_increment":0.1,"qty_increment":0.00000001,"price_precision":1,
       "qty_precision":8,..}]}}

Numbers are JSON numbers; their shortest text is the exact increment. ``status``:
``online``, ``post_only`` and ``limit_only`` trade; ``delisted`` is delisted; the
others (``cancel_only``, ``reduce_only``, ``maintenance``, ``work_in_progress``) are
halted.
"""

from __future__ import annotations

from typing import Any

import orjson

from feeds.metadata import InstrumentInfo, MetadataPage, TradingStatus, exact, item, load_json

SUBSCRIBE_FRAME = orjson.dumps(
    {"method": "subscribe", "params": {"channel": "instrument", "snapshot": True}}
).decode()
_TRADING = frozenset({"online", "post_only", "limit_only"})


def parse_instrument_frame(frame: bytes | str) -> MetadataPage | None:
    """The pairs of an ``instrument`` snapshot; ``None`` for any other frame. O(pairs)."""
    document = load_json(frame, "kraken")
    if not (
        isinstance(document, dict)
        and document.get("channel") == "instrument"
        and document.get("type") == "snapshot"
    ):
        return None
    pairs = item(item(document, "data", "kraken"), "pairs", "kraken")
    return MetadataPage(tuple(_instrument(pair) for pair in pairs))


def _instrument(pair: Any) -> InstrumentInfo:
    symbol = item(pair, "symbol", "kraken")
    base, quote = item(pair, "base", "kraken"), item(pair, "quote", "kraken")
    status = item(pair, "status", "kraken")
    return InstrumentInfo(
        symbol=symbol,
        canonical=f"{base}-{quote}",
        base=base,
        quote=quote,
        tick=exact(item(pair, "price_increment", "kraken"), "price_increment", "kraken"),
        lot=exact(item(pair, "qty_increment", "kraken"), "qty_increment", "kraken"),
        status=(
            TradingStatus.TRADING
            if status in _TRADING
            else TradingStatus.DELISTED
            if status == "delisted"
            else TradingStatus.HALTED
        ),
        venue_status=status,
    )
