"""Capped, jittered exponential backoff that starts over after a good connection."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``, each scaled by a random
    factor in [0.5, 1) so that many clients do not reconnect in lockstep."""

    def __init__(
        self,
        *,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._rng = rng
        self.attempts = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return delay * (0.5 + self._rng() / 2)

    def reset(self) -> None:
        self.attempts = 0
