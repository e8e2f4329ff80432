"""BBO rows in PostgreSQL's binary ``COPY`` format, amounts as exact ``NUMERIC``.

The PostgreSQL backend copies its ``bbo`` rows in the binary format: the server takes
integers and ``NUMERIC`` values as they are stored instead of parsing text. asyncpg's
own binary encoder wants a ``Decimal`` per amount, and building one per value cost
more than the text it would save; here an amount goes straight from the book's
fixed-point int (``book.fixed``, scale 10^12) to ``NUMERIC``'s wire form: base-10000
digit groups, the weight of the first, the sign and the display scale. The display
scale is the shortest exact one (``43000.1`` has 1, as ``format_fixed`` writes it), so
what is stored is the very value, and the very text, that the text format stored.
Market data repeats its prices and sizes, so each amount's encoded field is memoized
(bounded, as ``format_fixed`` is); venue and symbol fields too.

The stream (``COPY ... FROM STDIN (FORMAT binary)``): ``HEADER``, then each row as a
field count and its fields (each a length and its bytes; NULL is length -1), then
``TRAILER``. Timestamps and ``seq`` are ``BIGINT``: a value past 64 bits raises
``struct.error`` here, where the text format would have been refused by the server.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from book.fixed import SCALE_DIGITS
from publish.storage.rows import BboRow

COLUMNS = (
    "ts_event",
    "ts_recv",
    "venue",
    "symbol",
    "seq",
    "bid_px",
    "bid_qty",
    "ask_px",
    "ask_qty",
)
"""The ``bbo`` columns, in the order each row's fields are encoded."""
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
"""The signature, no flags, no header extension."""
TRAILER = struct.pack("!h", -1)

_FIELDS = 9
_NULL = struct.pack("!i", -1)
_ROW_START = struct.Struct("!hiqiq")
"""The field count, then ``ts_event`` and ``ts_recv`` (each a length of 8 and an int8)."""
_INT8 = struct.Struct("!iq")
_LENGTH = struct.Struct("!i")
_GROUP = 10_000
"""``NUMERIC``'s digits are base-10000 groups."""
_FRACTION_GROUPS = SCALE_DIGITS // 4
_SIGN_POSITIVE = 0x0000
_SIGN_NEGATIVE = 0x4000
_MEMO_LIMIT = 65_536
_TEXT_MEMO_LIMIT = 4096

assert SCALE_DIGITS % 4 == 0, "the fraction must be whole base-10000 groups"


class BboCopyEncoder:
    """Encodes BBO rows as binary ``COPY`` rows; keeps its memos between batches. Used on
    the event loop only."""

    def __init__(self) -> None:
        self._amounts: dict[int, bytes] = {}
        self._texts: dict[str, bytes] = {}

    def rows(self, rows: Sequence[BboRow]) -> bytes:
        """``rows`` as binary ``COPY`` rows (no header, no trailer)."""
        start, int8, amount, text, null = (
            _ROW_START.pack,
            _INT8.pack,
            self.amount,
            self.text,
            _NULL,
        )
        parts: list[bytes] = []
        append = parts.append
        for row in rows:
            bid, bid_qty, ask, ask_qty = row.bid_px, row.bid_qty, row.ask_px, row.ask_qty
            append(start(_FIELDS, 8, row.ts_event, 8, row.ts_recv))
            append(text(row.venue))
            append(text(row.symbol))
            append(int8(8, row.seq))
            append(null if bid is None else amount(bid))
            append(null if bid_qty is None else amount(bid_qty))
            append(null if ask is None else amount(ask))
            append(null if ask_qty is None else amount(ask_qty))
        return b"".join(parts)

    def amount(self, value: int) -> bytes:
        """A fixed-point amount as a ``NUMERIC`` field (its length, then the value)."""
        field = self._amounts.get(value)
        if field is None:
            body = numeric(value)
            field = _LENGTH.pack(len(body)) + body
            if len(self._amounts) >= _MEMO_LIMIT:
                self._amounts.clear()
            self._amounts[value] = field
        return field

    def text(self, value: str) -> bytes:
        """A text field: its UTF-8 bytes after their length."""
        field = self._texts.get(value)
        if field is None:
            encoded = value.encode()
            field = _LENGTH.pack(len(encoded)) + encoded
            if len(self._texts) < _TEXT_MEMO_LIMIT:
                self._texts[value] = field
        return field


def numeric(value: int) -> bytes:
    """The fixed-point ``value`` (units of 10^-12) as ``NUMERIC``'s binary form: the
    count of digit groups, the weight of the first (the power of 10000 it stands for),
    the sign, the display scale (the decimals of the shortest exact text), then the
    groups, leading and trailing zero groups left out. O(digits)."""
    sign = _SIGN_POSITIVE
    if value < 0:
        sign, value = _SIGN_NEGATIVE, -value
    whole, fraction = divmod(value, 10**SCALE_DIGITS)
    scale = 0
    if fraction:
        decimals = str(fraction)
        scale = SCALE_DIGITS - (len(decimals) - len(decimals.rstrip("0")))
    groups: list[int] = []
    while whole:
        whole, group = divmod(whole, _GROUP)
        groups.append(group)
    groups.reverse()
    weight = len(groups) - 1
    tail: list[int] = []
    for _ in range(_FRACTION_GROUPS):
        fraction, group = divmod(fraction, _GROUP)
        tail.append(group)
    groups.extend(reversed(tail))
    while groups and groups[-1] == 0:
        groups.pop()
    leading = 0
    while leading < len(groups) and groups[leading] == 0:
        leading += 1
    digits = groups[leading:]
    weight = weight - leading if digits else 0
    return struct.pack(f"!hhhh{len(digits)}h", len(digits), weight, sign, scale, *digits)
