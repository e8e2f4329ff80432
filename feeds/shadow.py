"""The sink of a standby connection (make-before-break): books synced in the shadow.

A standby connection's session writes here instead of downstream. The shadow keeps
each instrument's latest snapshot and which instruments are live; ``ready`` is set
while every instrument is live and cleared as soon as one is not. Promotion swaps the
session's sink for the real one; no book or state written here ever reaches a reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from book.incidents import FeedIncident, IncidentKind
from book.sink import FeedSink
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus


class ShadowSink:
    """Latest snapshot and liveness of a standby connection's books. O(1) per call."""

    def __init__(self, instruments: Iterable[str], downstream: FeedSink) -> None:
        self.downstream = downstream
        self.instruments = frozenset(instruments)
        self.latest: dict[str, BookSnapshot] = {}
        self.ready = asyncio.Event()
        """Set while every instrument is live."""
        self._live: set[str] = set()

    def add_instrument(self, instrument: str, ts: int) -> None:
        pass

    def publish(self, snapshot: BookSnapshot) -> None:
        self.latest[snapshot.instrument] = snapshot

    def set_status(self, status: InstrumentStatus) -> None:
        if status.state is InstrumentState.LIVE:
            self._live.add(status.instrument)
            if self._live >= self.instruments:
                self.ready.set()
        else:
            self._live.discard(status.instrument)
            self.latest.pop(status.instrument, None)
            self.ready.clear()

    def incident(self, incident: FeedIncident) -> None:
        """Errors the venue sent go downstream (they concern the venue, whichever
        connection brought them); what happens to books nobody reads does not."""
        if incident.kind is IncidentKind.ERROR:
            self.downstream.incident(incident)
