"""OKX v5 order book checksum: CRC32 of the best 25 bids and asks, interleaved.

OKX's documented example (``books`` channel, "Calculate Checksum")::

    bids [["3366.1","7","0","3"], ["3366","6","3","4"]]
    asks [["3366.8","9","10","3"], ["3368","8","3","4"]]
    check string "3366.1:7:3366.8:9:3366:6:3368:8"

A side shorter than 25 levels simply contributes fewer pairs
(``"3366.1:7:3366.8:9:3368:8:3372:8"`` for one bid and three asks). The value is the
CRC32 of that string as a *signed* 32-bit integer. Prices and sizes are the exchange's
own strings: ``"0.10"`` and ``"0.1"`` give different checksums.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from itertools import zip_longest

CHECKSUM_DEPTH = 25
"""Levels per side that the checksum covers."""

TextLevel = tuple[str, str]
"""(price, size) exactly as the exchange wrote them."""


def okx_checksum(bids: Sequence[TextLevel], asks: Sequence[TextLevel]) -> int:
    """Signed CRC32 over the best ``CHECKSUM_DEPTH`` levels of each side (best first).

    O(depth): at most 100 strings joined and one CRC32 over ~1 KB.
    """
    parts: list[str] = []
    for bid, ask in zip_longest(bids[:CHECKSUM_DEPTH], asks[:CHECKSUM_DEPTH]):
        if bid is not None:
            parts += bid
        if ask is not None:
            parts += ask
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc & 0x8000_0000 else crc
