"""Canonical instrument ids (``binance:BTC-USDT``) <-> each venue's own symbols (``BTCUSDT``).

Configured instruments name both spellings. A recording replayed without them is read
with ``DiscoveringSymbolMap``, which tells a venue symbol's canonical name as best it
can (``resolve_canonical``: the venue's metadata where it is known, else the venue's
own spelling read backwards) and keeps every symbol it could not tell, so that none is
dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from book.instruments import instrument_id

KNOWN_QUOTES = (
    # stablecoins and dollar tokens
    *("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USDP", "PAX", "DAI", "UST", "USDS", "PYUSD"),
    *("AEUR", "EURI", "VAI"),
    # fiat currencies
    *("USD", "EUR", "GBP", "TRY", "BRL", "AUD", "RUB", "UAH", "ZAR", "NGN", "PLN", "RON"),
    *("ARS", "JPY", "MXN", "COP", "CZK", "IDR", "KRW", "CAD", "CHF", "SGD", "HKD", "INR"),
    # fiat tokens of one venue (Binance)
    *("BIDR", "IDRT", "BVND", "BKRW"),
    # coins
    *("BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "DOT"),
)
"""Quote currencies of concatenated symbols (``ETHBRL``): Binance's and Bybit's quote
assets. Without the venue's metadata, a symbol is split at the longest one it ends with."""


def split_concatenated(venue_symbol: str, quotes: Iterable[str] = KNOWN_QUOTES) -> str:
    """``"NKNUSDT"`` -> ``"NKN-USDT"`` by the longest known quote suffix; ``ValueError``
    when it ends with none."""
    upper = venue_symbol.upper()
    for quote in sorted(quotes, key=len, reverse=True):
        if upper.endswith(quote) and len(upper) > len(quote):
            return f"{upper[: -len(quote)]}-{quote}"
    raise ValueError(f"cannot tell base from quote in {venue_symbol!r}")


def resolve_canonical(
    venue_symbol: str, spelling: Callable[[str], str], known: Mapping[str, str]
) -> str | None:
    """The canonical symbol of ``venue_symbol``, as best it can be told: what the
    venue's metadata says (``known``: venue symbol -> canonical, e.g. recorded with the
    traffic), else the venue's spelling read backwards (``spelling``: its separators
    where it has them, else ``split_concatenated``); ``None`` when neither can tell."""
    canonical = known.get(venue_symbol)
    if canonical is not None:
        return canonical
    try:
        return spelling(venue_symbol)
    except ValueError:
        return None


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
    whose instruments are not configured), naming each with ``resolve_canonical``
    (``to_canonical``: the venue's spelling read backwards; ``known``: its metadata).

    ``unresolved`` counts, per venue symbol it could not name, the times it was asked
    (once per message naming it): nothing is dropped without a trace.
    """

    __slots__ = ("_to_canonical", "_known", "unresolved")

    def __init__(
        self,
        venue: str,
        to_canonical: Callable[[str], str],
        known: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(venue, {})
        self._to_canonical = to_canonical
        self._known: Mapping[str, str] = known if known is not None else {}
        self.unresolved: dict[str, int] = {}

    def instrument(self, venue_symbol: str) -> str | None:
        known = self._to_instrument.get(venue_symbol)
        if known is not None:
            return known
        canonical = resolve_canonical(venue_symbol, self._to_canonical, self._known)
        if canonical is None:
            self.unresolved[venue_symbol] = self.unresolved.get(venue_symbol, 0) + 1
            return None
        instrument = instrument_id(self.venue, canonical)
        self._to_instrument[venue_symbol] = instrument
        self._to_venue[instrument] = venue_symbol
        return instrument
