"""The rows stored by the flusher: one frozen value type per table of the storage schema
(a position's is the position itself).

Prices and quantities are fixed-point ints (``book.fixed``); backends turn them into exact
database values (SQLite: decimal text, PostgreSQL: NUMERIC), never binary floats.
"""

from __future__ import annotations

from dataclasses import dataclass

from book.incidents import FeedIncident, IncidentKind
from book.snapshot import BookSnapshot
from publish.position import Position


@dataclass(frozen=True, slots=True)
class BboRow:
    """One BBO change of one instrument (``None`` prices/quantities: that side is empty)."""

    ts_event: int
    ts_recv: int
    venue: str
    symbol: str
    seq: int
    bid_px: int | None
    bid_qty: int | None
    ask_px: int | None
    ask_qty: int | None


def bbo_row_from_snapshot(snapshot: BookSnapshot) -> BboRow:
    """The BBO row of ``snapshot``. O(1): two ``str.partition`` calls, no copies of levels."""
    return BboRow(
        ts_event=snapshot.ts_event,
        ts_recv=snapshot.ts_recv,
        venue=snapshot.venue,
        symbol=snapshot.symbol,
        seq=snapshot.seq,
        bid_px=snapshot.bid,
        bid_qty=snapshot.bid_qty,
        ask_px=snapshot.ask,
        ask_qty=snapshot.ask_qty,
    )


PositionRow = Position
"""The whole current state of one position as stored: the ``publish.position.Position``
itself, so writing one makes no copy. Writing it again replaces the stored one. ``id``
is chosen by the client, so it is unique per ``account`` only; ``closed_ts`` is ``None``
while the position is open."""


FeedEventKind = IncidentKind
"""The ``feed_events.kind`` column holds the feed's own incident kinds."""


@dataclass(frozen=True, slots=True)
class FeedEventRow:
    """Something that happened to a venue connection or one of its books.

    ``instrument`` is ``None`` for connection-wide events (connect, disconnect).
    """

    ts: int
    venue: str
    instrument: str | None
    kind: FeedEventKind
    detail: str


def feed_event_row(incident: FeedIncident) -> FeedEventRow:
    """The ``feed_events`` row of a feed incident."""
    return FeedEventRow(
        ts=incident.ts,
        venue=incident.venue,
        instrument=incident.instrument,
        kind=incident.kind,
        detail=incident.detail,
    )
