"""Venue symbols -> canonical names, without the venue's metadata and with it."""

from __future__ import annotations

import pytest

from feeds.kraken.adapter import canonical_symbol
from feeds.symbols import DiscoveringSymbolMap, resolve_canonical, split_concatenated


@pytest.mark.parametrize(
    ("native", "canonical"),
    [
        ("ETHBRL", "ETH-BRL"),
        ("BTCAUD", "BTC-AUD"),
        ("ADARUB", "ADA-RUB"),
        ("NKNUSDT", "NKN-USDT"),
        ("ADATUSD", "ADA-TUSD"),  # the longest quote it ends with
        ("WBTCETH", "WBTC-ETH"),
        ("BTCUSDC", "BTC-USDC"),
        ("SHIBTRY", "SHIB-TRY"),
        ("BTCIDRT", "BTC-IDRT"),
    ],
)
def test_concatenated_symbols_split_at_the_longest_known_quote(native: str, canonical: str) -> None:
    assert split_concatenated(native) == canonical


@pytest.mark.parametrize("native", ["FOOQQQ", "USDT", ""])
def test_a_symbol_with_no_known_quote_is_not_guessed(native: str) -> None:
    with pytest.raises(ValueError, match="cannot tell base from quote"):
        split_concatenated(native)


def test_the_venue_metadata_comes_first_then_its_spelling() -> None:
    known = {"FOOQQQ": "FOO-QQQ", "ETHBRL": "ETH-BRL"}
    assert resolve_canonical("FOOQQQ", split_concatenated, known) == "FOO-QQQ"
    assert resolve_canonical("BTCAUD", split_concatenated, known) == "BTC-AUD"
    assert resolve_canonical("BARZZZ", split_concatenated, known) is None
    # A venue with separators reads its own: Kraken's "/".
    assert resolve_canonical("ETH/BRL", canonical_symbol, {}) == "ETH-BRL"
    assert resolve_canonical("ETHBRL", canonical_symbol, {}) is None


def test_a_discovering_map_keeps_every_symbol_it_cannot_name() -> None:
    symbols = DiscoveringSymbolMap("binance", split_concatenated, {"FOOQQQ": "FOO-QQQ"})
    assert symbols.instrument("ETHBRL") == "binance:ETH-BRL"
    assert symbols.instrument("FOOQQQ") == "binance:FOO-QQQ"
    assert [symbols.instrument("BARZZZ") for _ in range(3)] == [None] * 3
    assert symbols.instrument("BAZYYY") is None
    assert symbols.unresolved == {"BARZZZ": 3, "BAZYYY": 1}
    assert symbols.instruments() == ["binance:ETH-BRL", "binance:FOO-QQQ"]
    assert symbols.venue_symbol("binance:ETH-BRL") == "ETHBRL"
