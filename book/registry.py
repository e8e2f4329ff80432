"""Where the latest immutable snapshot and status of every instrument live.

The registry is the in-process ``FeedSink``: ingest declares instruments, publishes
snapshots, sets states and reports incidents to it. Readers (fan-out, storage, HTTP,
metrics, a bus publisher) either look up the latest value or register a listener that
is called synchronously, in the event loop, right after each write. Listeners must be
quick and must not raise: a listener that raises is counted and logged, and the
remaining listeners still run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from book.consolidated import ConsolidatedBbo, consolidate
from book.incidents import FeedIncident, IncidentListener
from book.instruments import symbol_of
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus

log = logging.getLogger(__name__)

SnapshotListener = Callable[[BookSnapshot, BookSnapshot | None], None]
StatusListener = Callable[[InstrumentStatus], None]
NbboListener = Callable[[ConsolidatedBbo], None]


class BookRegistry:
    """Latest snapshot, status and consolidated BBO per instrument / canonical symbol."""

    def __init__(self, *, nbbo_seq_base: int = 0) -> None:
        """``nbbo_seq_base``: where consolidated quotes' ``seq`` start (``book.versions``)."""
        self._nbbo_seq_base = nbbo_seq_base
        self._books: dict[str, BookSnapshot] = {}
        self._status: dict[str, InstrumentStatus] = {}
        self._nbbo: dict[str, ConsolidatedBbo] = {}
        self._by_symbol: dict[str, list[str]] = defaultdict(list)
        self._snapshot_listeners: list[SnapshotListener] = []
        self._status_listeners: list[StatusListener] = []
        self._nbbo_listeners: list[NbboListener] = []
        self._incident_listeners: list[IncidentListener] = []
        self.listener_errors = 0

    # -- registration -------------------------------------------------------------

    def add_instrument(self, instrument: str, ts: int = 0) -> None:
        """Declare an instrument (state ``syncing``) so it is known before its first book."""
        if instrument in self._status:
            return
        self._status[instrument] = InstrumentStatus(
            instrument, InstrumentState.SYNCING, "starting", ts
        )
        self._by_symbol[symbol_of(instrument)].append(instrument)

    def on_snapshot(self, listener: SnapshotListener) -> None:
        self._snapshot_listeners.append(listener)

    def on_status(self, listener: StatusListener) -> None:
        self._status_listeners.append(listener)

    def on_nbbo(self, listener: NbboListener) -> None:
        self._nbbo_listeners.append(listener)

    def on_incident(self, listener: IncidentListener) -> None:
        self._incident_listeners.append(listener)

    # -- writers (the feed that owns the instrument) --------------------------------

    def publish(self, snapshot: BookSnapshot) -> None:
        """Make ``snapshot`` the instrument's latest and tell listeners. O(listeners)."""
        previous = self._books.get(snapshot.instrument)
        self._books[snapshot.instrument] = snapshot
        for listener in self._snapshot_listeners:
            try:
                listener(snapshot, previous)
            except Exception:
                self._listener_failed(listener)
        if not snapshot.same_top(previous):
            self._update_nbbo(snapshot.symbol)

    def set_status(self, status: InstrumentStatus) -> None:
        """Record a state change and tell listeners (only when state or reason changed)."""
        previous = self._status.get(status.instrument)
        if previous is None:
            self._by_symbol[symbol_of(status.instrument)].append(status.instrument)
        elif previous.state == status.state and previous.reason == status.reason:
            return
        self._status[status.instrument] = status
        for listener in self._status_listeners:
            try:
                listener(status)
            except Exception:
                self._listener_failed(listener)
        self._update_nbbo(symbol_of(status.instrument))

    def incident(self, incident: FeedIncident) -> None:
        """Tell incident listeners (storage keeps them as ``feed_events``)."""
        for listener in self._incident_listeners:
            try:
                listener(incident)
            except Exception:
                self._listener_failed(listener)

    # -- readers ------------------------------------------------------------------------

    def get(self, instrument: str) -> BookSnapshot | None:
        return self._books.get(instrument)

    def status(self, instrument: str) -> InstrumentStatus | None:
        return self._status.get(instrument)

    def is_live(self, instrument: str) -> bool:
        status = self._status.get(instrument)
        return status is not None and status.state is InstrumentState.LIVE

    def live_snapshot(self, instrument: str) -> BookSnapshot | None:
        """The latest snapshot if the instrument is live, else ``None``."""
        return self._books.get(instrument) if self.is_live(instrument) else None

    def instruments(self) -> list[str]:
        return sorted(self._status)

    def statuses(self) -> list[InstrumentStatus]:
        return [self._status[name] for name in sorted(self._status)]

    def symbols(self) -> list[str]:
        return sorted(self._by_symbol)

    def nbbo(self, symbol: str) -> ConsolidatedBbo | None:
        return self._nbbo.get(symbol)

    # -- internals ------------------------------------------------------------------------

    def _update_nbbo(self, symbol: str) -> None:
        live = [
            snap
            for name in self._by_symbol.get(symbol, ())
            if (snap := self.live_snapshot(name)) is not None
        ]
        changed = consolidate(symbol, live, self._nbbo.get(symbol), seq_base=self._nbbo_seq_base)
        if changed is None:
            return
        self._nbbo[symbol] = changed
        for listener in self._nbbo_listeners:
            try:
                listener(changed)
            except Exception:
                self._listener_failed(listener)

    def _listener_failed(self, listener: object) -> None:
        self.listener_errors += 1
        log.exception("book listener %r failed", listener)
