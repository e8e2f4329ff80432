"""The one seam between ingest and everything that reads it.

Ingest (the feed runners) hands downstream exactly four things through a ``FeedSink``:
the instruments it will keep, each applied book snapshot, each instrument's state
changes, and incidents. In one process the ``BookRegistry`` is the sink; a standby
connection (make-before-break) writes to a shadow sink until it is promoted; in a
cluster the ingest's sink also publishes on the bus and an edge's registry is fed from
the bus. Nothing downstream reaches into ingest, and ingest never reads the sink back
to decide its own state.
"""

from __future__ import annotations

from typing import Protocol

from book.incidents import FeedIncident
from book.snapshot import BookSnapshot
from book.status import InstrumentStatus


class FeedSink(Protocol):
    """What ingest writes. Every call is synchronous, quick, and must not raise."""

    def add_instrument(self, instrument: str, ts: int) -> None:
        """Declare an instrument (state ``syncing``) before its first snapshot."""

    def publish(self, snapshot: BookSnapshot) -> None:
        """Make ``snapshot`` the instrument's latest (one whole applied message)."""

    def set_status(self, status: InstrumentStatus) -> None:
        """Record the instrument's state (``syncing``/``live``/``stale``) and reason."""

    def incident(self, incident: FeedIncident) -> None:
        """Report what happened to a connection or an instrument's book."""


class DiscardingSink:
    """Keeps nothing: the sink of a connection whose books nobody reads any more (a
    connection that was replaced, in the moment before it is closed)."""

    def add_instrument(self, instrument: str, ts: int) -> None:
        pass

    def publish(self, snapshot: BookSnapshot) -> None:
        pass

    def set_status(self, status: InstrumentStatus) -> None:
        pass

    def incident(self, incident: FeedIncident) -> None:
        pass
