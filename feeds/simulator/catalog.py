"""The instruments the built-in simulators list, in one table for every venue.

Each venue lists BTC, ETH and SOL with its own tick size, lot size and printed
decimals (as the real venue does); Binance also lists pairs quoted in BRL and AUD and
one halted pair, so instrument metadata has something to say beyond USDT. Start
prices come from one asset table converted into the quote currency, so every venue
starts at the same market (``feeds.simulator.reference`` keeps it together).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from feeds.metadata import TradingStatus
from feeds.simulator.market import SimSymbol

ASSET_PRICES: Mapping[str, Decimal] = {
    "BTC": Decimal("61800"),
    "ETH": Decimal("2600"),
    "SOL": Decimal("145"),
    "LUNA": Decimal("0.45"),
}
"""Start prices in US dollars."""
QUOTE_RATES: Mapping[str, Decimal] = {
    "USD": Decimal(1),
    "USDT": Decimal(1),
    "USDC": Decimal(1),
    "BRL": Decimal("5.5"),
    "AUD": Decimal("1.52"),
}
"""Units of each quote currency per US dollar."""
GENERIC_PRICE = Decimal(100)
"""Start price of an asset the table does not know."""


@dataclass(frozen=True, slots=True)
class Listing:
    """One row of a venue's table: ``canonical`` (``BTC-USDT``, ``BTC-USDT-PERP``) with
    the venue's tick and lot, mean level size, level spacing and printed decimals."""

    canonical: str
    tick: str
    lot: str
    mean_qty: str
    max_gap_ticks: int
    price_decimals: int
    qty_decimals: int
    status: TradingStatus = TradingStatus.TRADING


def _concatenated(canonical: str) -> str:
    return canonical.removesuffix("-PERP").replace("-", "")


def _okx(canonical: str) -> str:
    return canonical.removesuffix("-PERP") + "-SWAP" if canonical.endswith("-PERP") else canonical


def _slash(canonical: str) -> str:
    return canonical.replace("-", "/")


_SPOT_BYBIT = (
    Listing("BTC-USDT", "0.01", "0.000001", "0.25", 40, 2, 6),
    Listing("ETH-USDT", "0.01", "0.00001", "3", 8, 2, 5),
    Listing("SOL-USDT", "0.01", "0.001", "40", 2, 2, 3),
)
_LINEAR = (
    Listing("BTC-USDT-PERP", "0.10", "0.001", "2", 5, 2, 3),
    Listing("ETH-USDT-PERP", "0.01", "0.01", "20", 4, 2, 2),
    Listing("SOL-USDT-PERP", "0.010", "0.1", "200", 2, 3, 1),
)

LISTINGS: Mapping[str, tuple[Listing, ...]] = {
    "binance": (
        Listing("BTC-USDT", "0.01", "0.00001", "0.25", 40, 8, 8),
        Listing("ETH-USDT", "0.01", "0.0001", "3", 8, 8, 8),
        Listing("SOL-USDT", "0.01", "0.001", "40", 2, 8, 8),
        Listing("ETH-BRL", "0.01", "0.0001", "3", 8, 8, 8),
        Listing("BTC-AUD", "0.01", "0.00001", "0.25", 40, 8, 8),
        Listing("LUNA-USDT", "0.0001", "0.01", "500", 2, 8, 8, TradingStatus.HALTED),
    ),
    "binance-usdm": (
        Listing("BTC-USDT-PERP", "0.10", "0.001", "2", 5, 2, 3),
        Listing("ETH-USDT-PERP", "0.01", "0.001", "20", 4, 2, 3),
        Listing("SOL-USDT-PERP", "0.0100", "1", "300", 2, 4, 0),
    ),
    "okx": (
        Listing("BTC-USDT", "0.1", "0.00000001", "0.25", 5, 1, 8),
        Listing("ETH-USDT", "0.01", "0.000001", "3", 8, 2, 6),
        Listing("BTC-USDT-PERP", "0.1", "0.01", "40", 3, 1, 2),
    ),
    "bybit": _SPOT_BYBIT,
    "bybit-linear": _LINEAR,
    "coinbase": (
        Listing("BTC-USD", "0.01", "0.00000001", "0.25", 40, 2, 8),
        Listing("ETH-USD", "0.01", "0.00000001", "3", 3, 2, 8),
        Listing("SOL-USD", "0.01", "0.001", "40", 2, 2, 3),
    ),
    "kraken": (
        Listing("BTC-USD", "0.1", "0.00000001", "0.5", 5, 1, 8),
        Listing("ETH-USD", "0.01", "0.00000001", "5", 8, 2, 8),
        Listing("SOL-USD", "0.01", "0.00000001", "40", 3, 2, 8),
    ),
}
"""Venue id -> what its simulator lists, in the venue's tick and lot sizes."""

HALF_SPREAD_BPS: Mapping[str, float] = {
    "binance": 0.8,
    "binance-usdm": 0.6,
    "okx": 1.0,
    "bybit": 1.2,
    "bybit-linear": 0.9,
    "coinbase": 1.6,
    "kraken": 2.0,
}
"""Venue id -> the least distance, in basis points, of its best bid and ask from the
reference price: each venue's own spread."""
DEFAULT_HALF_SPREAD_BPS = 1.0

SPELLING: Mapping[str, Callable[[str], str]] = {
    "binance": _concatenated,
    "binance-usdm": _concatenated,
    "okx": _okx,
    "bybit": _concatenated,
    "bybit-linear": _concatenated,
    "coinbase": str,
    "kraken": _slash,
}
"""Venue id -> how the venue spells a canonical symbol."""


def simulated_symbols(venue: str) -> tuple[SimSymbol, ...]:
    """What venue id ``venue``'s simulator lists by default (``KeyError`` if none)."""
    spell = SPELLING[venue]
    return tuple(_symbol(spell(listing.canonical), listing) for listing in LISTINGS[venue])


def generic_symbol(native: str) -> SimSymbol:
    """A simulated instrument for a venue symbol the table does not list."""
    spec = SimSymbol(native, price="100.00", tick="0.01", lot="0.001", mean_qty="10")
    start = start_price(spec.base, spec.quote, Decimal(spec.tick))
    return SimSymbol(native, price=str(start), tick="0.01", lot="0.001", mean_qty="10")


def start_price(base: str, quote: str, tick: Decimal) -> Decimal:
    """The start price of ``base`` in ``quote``, on the ``tick`` grid."""
    usd = ASSET_PRICES.get(base, GENERIC_PRICE) * QUOTE_RATES.get(quote, Decimal(1))
    return max(tick, (usd / tick).to_integral_value() * tick)


def _symbol(native: str, listing: Listing) -> SimSymbol:
    base, quote = listing.canonical.split("-")[:2]
    price = start_price(base, quote, Decimal(listing.tick))
    return SimSymbol(
        native,
        price=str(price),
        tick=listing.tick,
        lot=listing.lot,
        mean_qty=listing.mean_qty,
        max_gap_ticks=listing.max_gap_ticks,
        price_decimals=listing.price_decimals,
        qty_decimals=listing.qty_decimals,
        base=base,
        quote=quote,
        status=listing.status,
    )
