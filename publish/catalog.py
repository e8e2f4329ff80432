"""What instruments and symbols the server carries, as request validation needs it.

Sessions and the position book check keys against an ``InstrumentCatalog`` injected into
them, not against the registry's API; ``RegistryCatalog`` answers from a
``BookRegistry``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from book.registry import BookRegistry


class InstrumentCatalog(Protocol):
    def carries(self, instrument: str) -> bool:
        """Whether the server carries ``instrument`` (one key: the position book's
        question, asked for every open)."""
        ...

    def unknown_instruments(self, instruments: Iterable[str]) -> list[str]:
        """Those of ``instruments`` the server does not carry, in order."""
        ...

    def unknown_symbols(self, symbols: Iterable[str]) -> list[str]:
        """Those of the canonical ``symbols`` no venue of the server carries, in order."""
        ...


class RegistryCatalog:
    """The instruments declared in a registry. O(keys) per question (symbols: plus one
    pass over the symbols)."""

    def __init__(self, registry: BookRegistry) -> None:
        self._registry = registry

    def carries(self, instrument: str) -> bool:
        return self._registry.status(instrument) is not None

    def unknown_instruments(self, instruments: Iterable[str]) -> list[str]:
        return [instrument for instrument in instruments if not self.carries(instrument)]

    def unknown_symbols(self, symbols: Iterable[str]) -> list[str]:
        known = set(self._registry.symbols())
        return [symbol for symbol in symbols if symbol not in known]
