"""What a venue says about its instruments: assets, tick and lot size, trading status.

Each venue publishes it in its own format (Binance ``exchangeInfo``, OKX
``public/instruments``, Bybit ``instruments-info``, Coinbase products, Kraken's
``instrument`` channel); ``feeds/<venue>/metadata.py`` parses it, sans-I/O, into
``InstrumentInfo`` values, and says which requests fetch it (``MetadataRequest``).
The runner side fetches them; ``app`` checks configured instruments and expands
patterns against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


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


def perpetual(canonical: str) -> str:
    """The canonical id of the perpetual on ``BASE-QUOTE`` (``BTC-USDT-PERP``)."""
    return f"{canonical}-PERP"
