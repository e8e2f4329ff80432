"""Request-weight budget for a venue's REST API (Binance: 6,000 weight per minute per IP).

Shared by every runner of a venue, so starting or resyncing many instruments spends the
budget at the venue's pace instead of hammering it; a 429/418 from the venue pauses
every request until its Retry-After has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class WeightLimiter:
    """A token bucket of ``weight_per_minute`` that refills continuously.

    ``acquire(weight)`` waits until the bucket holds ``weight`` and takes it; requests
    are served in arrival order (one waiter at a time holds the lock), so a heavy
    request is never starved by light ones.
    """

    def __init__(
        self,
        weight_per_minute: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if weight_per_minute <= 0:
            raise ValueError("weight_per_minute must be positive")
        self.rate = weight_per_minute / 60.0
        self.capacity = burst if burst is not None else weight_per_minute
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.spent = 0.0
        self.waits = 0

    async def acquire(self, weight: float) -> None:
        if weight > self.capacity:
            raise ValueError(f"weight {weight} exceeds the bucket's capacity {self.capacity}")
        async with self._lock:
            while True:
                now = self._clock()
                delay = self._paused_until - now
                if delay <= 0:
                    self._refill(now)
                    if self._tokens >= weight:
                        self._tokens -= weight
                        self.spent += weight
                        return
                    delay = (weight - self._tokens) / self.rate
                self.waits += 1
                await asyncio.sleep(delay)

    def pause(self, seconds: float) -> None:
        """The venue said to back off (429/418 Retry-After): nothing is sent until then."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._tokens = 0.0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
