"""Canonical instrument ids (``binance:BTC-USDT``) <-> each venue's own symbols (``BTCUSDT``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from book.instruments import instrument_id

KNOWN_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "USD", "TRY")


def split_concatenated(venue_symbol: str, quotes: Iterable[str] = KNOWN_QUOTES) -> str:
    """``"NKNUSDT"`` -> ``"NKN-USDT"`` by the longest known quote suffix."""
    upper = venue_symbol.upper()
    for quote in sorted(quotes, key=len, reverse=True):
        if upper.endswith(quote) and len(upper) > len(quote):
            return f"{upper[: -len(quote)]}-{quote}"
    raise ValueError(f"cannot tell base from quote in {venue_symbol!r}")


class SymbolMap:
    """Both directions of one venue's symbol mapping. Lookups are O(1) dict hits."""

    __slots__ = ("venue", "_to_venue", "_to_instrument")

    def __init__(self, venue: str, canonical_to_venue: Mapping[str, str]) -> None:
        self.venue = venue
        self._to_venue = {
            instrument_id(venue, canonical): native
            for canonical, native in canonical_to_venue.items()
        }
        self._to_instrument = {native: inst for inst, native in self._to_venue.items()}

    def instrument(self, venue_symbol: str) -> str | None:
        """The instrument id for a venue symbol, ``None`` if not configured."""
        return self._to_instrument.get(venue_symbol)

    def venue_symbol(self, instrument: str) -> str:
        return self._to_venue[instrument]

    def instruments(self) -> list[str]:
        return list(self._to_venue)

    def __contains__(self, instrument: object) -> bool:
        return instrument in self._to_venue


class DiscoveringSymbolMap(SymbolMap):
    """A symbol map that learns venue symbols as they appear (``replay`` of a recording
    whose instruments are not configured). ``to_canonical`` names a new symbol."""

    __slots__ = ("_to_canonical",)

    def __init__(self, venue: str, to_canonical: Callable[[str], str]) -> None:
        super().__init__(venue, {})
        self._to_canonical = to_canonical

    def instrument(self, venue_symbol: str) -> str | None:
        known = self._to_instrument.get(venue_symbol)
        if known is not None:
            return known
        try:
            canonical = self._to_canonical(venue_symbol)
        except ValueError:
            return None
        instrument = instrument_id(self.venue, canonical)
        self._to_instrument[venue_symbol] = instrument
        self._to_venue[instrument] = venue_symbol
        return instrument
