"""Offering a load at a steady rate: how many items are due at each tick."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def due_each_tick(rate: float, tick: float) -> AsyncIterator[int]:
    """Every ``tick`` seconds, how many items are due since the last yield so that ``rate``
    per second have been offered since the start (nothing is yielded while none is due);
    until the consumer stops. The consumer's work runs between ticks. O(1) per tick."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    offered = 0
    while True:
        due = int((loop.time() - started) * rate) - offered
        if due > 0:
            offered += due
            yield due
        await asyncio.sleep(tick)
