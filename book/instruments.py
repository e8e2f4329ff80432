"""Instrument ids: ``<venue>:<BASE>-<QUOTE>[-PERP]`` (``binance:BTC-USDT``).

The canonical symbol (``BTC-USDT``) without the venue names the consolidated book.
Every module that needs the venue or the symbol of an id asks here.
"""

from __future__ import annotations


def instrument_id(venue: str, symbol: str) -> str:
    """``instrument_id("binance", "BTC-USDT") == "binance:BTC-USDT"``."""
    return f"{venue}:{symbol}"


def split_instrument(instrument: str) -> tuple[str, str]:
    """``"binance:BTC-USDT"`` -> ``("binance", "BTC-USDT")``; ValueError if malformed."""
    venue, sep, symbol = instrument.partition(":")
    if not sep or not venue or not symbol:
        raise ValueError(f"instrument id must look like 'venue:BASE-QUOTE', got {instrument!r}")
    return venue, symbol


def venue_of(instrument: str) -> str:
    """``"binance:BTC-USDT"`` -> ``"binance"`` (no validation: hot path)."""
    return instrument.partition(":")[0]


def symbol_of(instrument: str) -> str:
    """``"binance:BTC-USDT"`` -> ``"BTC-USDT"`` (no validation: hot path)."""
    return instrument.partition(":")[2]
