"""Counters of one venue's feed traffic, as plain data.

Ingest increments them on its hot path (plain attribute additions); metrics reads them
once a second. Being plain data in ``book/``, they can be read in-process or carried
over a bus without the reader knowing anything of ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class FeedCounters:
    """What one venue's connections received and what their books went through."""

    frames: int = 0
    """Frames received (every kind)."""
    book_messages: int = 0
    """Book snapshots and updates routed to a book."""
    malformed: int = 0
    venue_errors: int = 0
    gaps: int = 0
    checksum_failures: int = 0
    mismatches: int = 0
    """Books found different from the venue's own best bid/ask."""
    crossed: int = 0
    resyncs: int = 0
    """Books reset after a problem (each gap, checksum, mismatch, crossed, silent book)."""
    refetches: int = 0
    """REST snapshots fetched again because they were older than the stream."""
    top_of_book_checked: int = 0
    internal_errors: int = 0
    handshake_failures: int = 0
    """Connections whose handshake (OKX login) was refused or not answered in time."""
    by_instrument: dict[str, int] = field(default_factory=dict)
    """Book messages per instrument id."""
