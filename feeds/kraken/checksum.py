"""Kraken's book checksum (WS v1 and v2) and the per-pair precision it depends on.

The checksum is the unsigned CRC32 of the top 10 asks (ascending) then the top 10 bids
(descending), each level written as its price then its quantity, each formatted with
the pair's decimals, the ``.`` removed and leading zeros stripped::

    ask 45285.2 x 0.00100000 -> "452852" + "100000"

Removing the point from a number printed with ``d`` decimals and stripping leading
zeros is the decimal text of the integer ``value * 10**d``, so the text comes straight
from the fixed-point integers without going through strings of decimals.

v2 sends prices and quantities as JSON numbers, so ``d`` is the pair's
``price_precision``/``qty_precision`` (Kraken's ``instrument`` channel, or
configuration); v1 sends padded strings whose decimals are the precision.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from book.fixed import SCALE_DIGITS
from book.snapshot import Level

CHECKSUM_LEVELS = 10
"""Levels per side the checksum covers, whatever the subscribed depth."""


@dataclass(frozen=True, slots=True)
class Precision:
    """Decimals of a pair's prices and quantities in Kraken's checksum (0..12)."""

    price: int
    qty: int

    def __post_init__(self) -> None:
        for name, decimals in (("price", self.price), ("qty", self.qty)):
            if not 0 <= decimals <= SCALE_DIGITS:
                raise ValueError(f"{name} precision must be in 0..{SCALE_DIGITS}, got {decimals}")


class PrecisionTable:
    """Instrument id -> ``Precision``: configured values, updated from the wire.

    The adapter owns one table; its parser records what the venue says (v2
    ``instrument`` channel, v1 decimal strings) and its syncs read it at every
    checksum. Lookups are O(1).
    """

    __slots__ = ("_by_instrument",)

    def __init__(self, initial: Mapping[str, Precision] | None = None) -> None:
        self._by_instrument: dict[str, Precision] = dict(initial or {})

    def get(self, instrument: str) -> Precision | None:
        return self._by_instrument.get(instrument)

    def set(self, instrument: str, precision: Precision) -> None:
        self._by_instrument[instrument] = precision

    def __contains__(self, instrument: object) -> bool:
        return instrument in self._by_instrument

    def as_dict(self) -> dict[str, Precision]:
        return dict(self._by_instrument)


def book_checksum(asks: Iterable[Level], bids: Iterable[Level], precision: Precision) -> int:
    """CRC32 of the best 10 ``asks`` (ascending) and ``bids`` (descending).

    Only the first ``CHECKSUM_LEVELS`` of each iterable are read. A value with more
    decimals than ``precision`` is truncated to it (and so will not match the venue's
    checksum: that precision is wrong). O(20) integer divisions + one CRC32, a few µs.
    """
    price_unit = 10 ** (SCALE_DIGITS - precision.price)
    qty_unit = 10 ** (SCALE_DIGITS - precision.qty)
    parts: list[str] = []
    for side in (asks, bids):
        for count, (price, qty) in enumerate(side):
            if count == CHECKSUM_LEVELS:
                break
            parts.append(str(price // price_unit))
            parts.append(str(qty // qty_unit))
    return zlib.crc32("".join(parts).encode("ascii"))


def decimals(text: str) -> int:
    """Digits after the point of a decimal string: ``"27120.00000"`` -> 5."""
    return len(text.partition(".")[2])
