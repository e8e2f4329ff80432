"""Reconnect delays: capped exponential backoff with full jitter."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Attempt ``n`` (from 0) waits a uniformly random time in
    ``[0, min(maximum, initial * factor**n)]`` seconds. Jitter spreads the reconnects of
    many clients after a server restart; the cap bounds how long a client stays away
    once the server is back. The client starts over from ``initial`` after every
    connection that was restored."""

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")

    def delays(self, uniform: Callable[[], float] = random.random) -> Iterator[float]:
        """The delays before each attempt, forever; ``uniform`` draws from [0, 1)."""
        ceiling = self.initial
        while True:
            yield ceiling * uniform()
            ceiling = min(self.maximum, ceiling * self.factor)
