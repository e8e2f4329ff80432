"""A position: what an account holds of one instrument, as the server reasons about it.

The position book creates and closes them, the profit engine marks them, the wire
protocol acknowledges them and storage derives its rows from them
(``publish.storage.positions``). Amounts are fixed-point ints (``book.fixed``).
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum

from publish.untracked import untrack
from publish.value import value_class


class PositionSide(StrEnum):
    """Long positions are ``buy`` (marked at the bid), short ones ``sell`` (at the ask)."""

    BUY = "buy"
    SELL = "sell"


@value_class
class Position:
    """One position, open (``closed_ts`` ``None``) or closed.

    ``id`` is chosen by the client, so it is unique per ``account`` only; ``opened_ts``
    and ``closed_ts`` are ns since the epoch.

    Its fields hold only strings, ints and an enum member, none of which can refer back
    to it, so it can never be part of a reference cycle: it is taken out of the cycle
    collector's sight when made (``publish.untracked``), and a server's open positions
    add nothing to the collector's passes. A field that could hold a container would
    break that; ``tests/publish/test_position.py`` checks the field types.
    """

    id: str
    account: str
    instrument: str
    side: PositionSide
    qty: int
    entry_price: int
    opened_ts: int
    closed_ts: int | None = None

    def __post_init__(self) -> None:
        untrack(self)

    @property
    def is_open(self) -> bool:
        return self.closed_ts is None

    @property
    def is_long(self) -> bool:
        return self.side is PositionSide.BUY

    def closed_at(self, ts: int) -> Position:
        """This position closed at ``ts``."""
        return replace(self, closed_ts=ts)

    def same_order(self, other: Position) -> bool:
        """The same instrument, side, quantity and price (a retried open)."""
        return (self.instrument, self.side, self.qty, self.entry_price) == (
            other.instrument,
            other.side,
            other.qty,
            other.entry_price,
        )
