"""One reference price per asset that every simulated venue quotes around.

Real venues quote the same asset at nearly the same price, so a consolidated book is
crossed or locked only for moments. The simulators get there by following one shared
*reference path*: a smooth random log-return of time, built from a few octaves of
value noise (hashed knots, smoothstep between them), each octave a longer period and
a larger amplitude. It is a pure function of ``(seed, asset, time)``: every simulator
that uses the same seed, in this process or another (``marketcast simulate``), sees
the same reference at the same moment, with no shared object between them. Each venue
adds its own smaller noise path on top (``VenueReference``), so venues disagree a
little, and quotes its own spread around the result.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

Octave = tuple[float, float]
"""(period in seconds, amplitude as a log-return)."""

ASSET_OCTAVES: tuple[Octave, ...] = (
    (0.5, 0.2e-4),
    (4.0, 1.0e-4),
    (30.0, 5.0e-4),
    (240.0, 20.0e-4),
    (1800.0, 60.0e-4),
)
"""The shared path: at most ~1.4 bp/s, tens of basis points over minutes."""
VENUE_OCTAVES: tuple[Octave, ...] = ((0.7, 0.15e-4), (5.0, 0.35e-4))
"""A venue's own deviation from the shared path: at most half a basis point."""
_MASK64 = (1 << 64) - 1


class NoisePath:
    """A smooth pseudo-random log-return of time in seconds, the same for the same key.

    ``at(t)`` is O(octaves): two hashed knots per octave, cached while ``t`` stays
    between the same knots.
    """

    __slots__ = ("_key", "_octaves", "_knots")

    def __init__(self, key: str, octaves: Sequence[Octave]) -> None:
        self._key = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest())
        self._octaves = tuple(octaves)
        self._knots: list[tuple[int, float, float]] = [(-1, 0.0, 0.0)] * len(self._octaves)

    def at(self, seconds: float) -> float:
        total = 0.0
        for octave, (period, amplitude) in enumerate(self._octaves):
            x = seconds / period
            index = math.floor(x)
            cached_index, left, right = self._knots[octave]
            if cached_index != index:
                left, right = self._knot(octave, index), self._knot(octave, index + 1)
                self._knots[octave] = (index, left, right)
            f = x - index
            total += amplitude * (left + (right - left) * f * f * (3.0 - 2.0 * f))
        return total

    def _knot(self, octave: int, index: int) -> float:
        """A value in [-1, 1) for knot ``index`` of ``octave`` (splitmix64 of the key)."""
        z = (self._key + (octave << 48) + index * 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        return z / 2.0**63 - 1.0


class VenueReference:
    """The price one venue quotes ``asset`` around at a given moment: ``start`` (a
    ``book.fixed`` price) moved by the shared path of ``(seed, asset)`` and the venue's
    own noise path. ``__call__`` reads ``clock_ns``; O(octaves)."""

    __slots__ = ("_start", "_shared", "_own", "_clock_ns")

    def __init__(
        self,
        *,
        seed: int | str,
        asset: str,
        venue: str,
        start: int,
        clock_ns: Callable[[], int],
    ) -> None:
        self._start = start
        self._shared = NoisePath(f"{seed}:{asset}", ASSET_OCTAVES)
        self._own = NoisePath(f"{seed}:{asset}:{venue}", VENUE_OCTAVES)
        self._clock_ns = clock_ns

    def __call__(self) -> int:
        seconds = self._clock_ns() / 1e9
        return round(self._start * math.exp(self._shared.at(seconds) + self._own.at(seconds)))


def basis_points(price: int, bps: float) -> int:
    """``bps`` basis points of a ``book.fixed`` price, at least one unit of the scale."""
    return max(1, round(price * bps / 10_000))
