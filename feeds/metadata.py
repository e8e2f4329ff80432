"""What a venue says about its instruments: assets, tick and lot size, trading status.

Each venue publishes it in its own format (Binance ``exchangeInfo``, OKX
``public/instruments``, Bybit ``instruments-info``, Coinbase products, Kraken's
``instrument`` channel); ``feeds/<venue>/metadata.py`` parses it, sans-I/O, into
``InstrumentInfo`` values, and says which requests fetch it (``MetadataRequest``).
The runner side fetches them; ``app`` checks configured instruments and expands
patterns against them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import orjson

from feeds.exceptions import MetadataError


class TradingStatus(StrEnum):
    """Whether an instrument trades, in the venue-neutral words marketcast uses."""

    TRADING = "trading"
    HALTED = "halted"
    """Listed but not trading now (a break, pre-open, auction, maintenance)."""
    DELISTED = "delisted"
    """Gone, or going: settled, expired, delisted."""


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    """One instrument as its venue describes it.

    ``symbol`` is the venue's own spelling (``BTCUSDT``); ``canonical`` marketcast's
    (``BTC-USDT``, ``BTC-USDT-PERP``). ``tick`` and ``lot`` are exact. ``venue_status``
    is the venue's own word for the state (``BREAK``, ``suspend``), the reason a halted
    or delisted instrument gets.
    """

    symbol: str
    canonical: str
    base: str
    quote: str
    tick: Decimal
    lot: Decimal
    status: TradingStatus
    venue_status: str


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    """One REST request of a venue's metadata: ``path`` (with query) below the REST base
    URL, and its weight in the venue's REST budget (``feeds.ratelimit``)."""

    path: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class MetadataPage:
    """What one metadata response said, and the request of the next page (if any)."""

    instruments: tuple[InstrumentInfo, ...]
    next: MetadataRequest | None = None


MetadataParser = Callable[[bytes | str], MetadataPage]
"""A venue's parser of one metadata response (sans-I/O)."""


def load_json(body: bytes | str, venue: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MetadataError(f"{venue} metadata is not JSON: {exc}") from exc


def item(mapping: Any, key: str, venue: str) -> Any:
    """``mapping[key]``, or ``MetadataError`` naming what is missing."""
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise MetadataError(f"{venue} metadata: missing {key!r}")
    return mapping[key]


def exact(value: Any, what: str, venue: str) -> Decimal:
    """An exact positive decimal from text (or a JSON number, by its shortest repr)."""
    try:
        number = Decimal(value if isinstance(value, str) else repr(value))
    except (InvalidOperation, TypeError):
        number = Decimal(0)
    if not number.is_finite() or number <= 0:
        raise MetadataError(f"{venue} metadata: {what} {value!r} is not a positive number")
    number = number.normalize()
    return number.quantize(Decimal(1)) if number.as_tuple().exponent > 0 else number  # type: ignore[operator]


def perpetual(canonical: str) -> str:
    """The canonical id of the perpetual on ``BASE-QUOTE`` (``BTC-USDT-PERP``)."""
    return f"{canonical}-PERP"
