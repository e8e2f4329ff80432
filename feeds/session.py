"""The feed session: what one venue connection's books do, with no I/O.

Frames, REST snapshots and timer ticks go in; what the downstream must know goes to the
session's ``FeedSink`` (snapshots, instrument states, incidents); what the driver must
do comes back as actions (fetch a REST snapshot, send frames, reconnect). The live
runner (``feeds.runner``) and replay (``feeds.replay``) drive the same session, so the
decision table below exists once:

====================================  ============================================
what a sync or the venue reported     what the session does
====================================  ============================================
a snapshot                            publish it; the first one (after a reset)
                                      also sets the instrument ``live``
a problem (gap, checksum, mismatch,   count it, set the instrument ``stale``, reset
crossed book, silent book)            its book, ``RequestSnapshot`` (with problem)
refetch (REST snapshot older than     count it, ``Refetch``
the stream)
a lost message of the connection      every instrument: as a problem (gap)
a venue error                         count, incident; ``Reconnect`` if it closes
a malformed frame                     count (the router), log
a tick: a book not back in sync       reset it again, ``RequestSnapshot`` (no
within ``resync_timeout``             problem)
a tick: a live book silent past its   as a problem (silent)
threshold (``feeds.silence``)
the venue halted an instrument        ``halt``: its book is put aside, its messages
(metadata refresh)                    ignored, no watchdog; ``resume``: back, reset,
                                      ``RequestSnapshot``
====================================  ============================================

The session keeps its own knowledge of which instruments it has set ``live``: it never
reads the sink back. All times are the driver's clock, in nanoseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from book.counters import FeedCounters
from book.incidents import FeedIncident, IncidentKind
from book.sink import FeedSink
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from feeds.dispatch import BookDispatcher
from feeds.events import ConnectionGapEvent, FeedEvent, MalformedEvent, VenueErrorEvent
from feeds.silence import SECOND_NS, InstrumentSilence
from feeds.sync import BookSync, ProblemKind, SyncProblem, SyncResult
from feeds.venue import VenueAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    """Get a fresh snapshot of ``instrument``: a REST fetch or a resubscription,
    whichever the venue uses. ``problem`` is why its book was reset (``None``: the
    previous request never brought it back)."""

    instrument: str
    problem: SyncProblem | None = None


@dataclass(frozen=True, slots=True)
class Refetch:
    """Fetch another REST snapshot of ``instrument``: the last one was older than the
    stream (the book was not found bad)."""

    instrument: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The venue said it is closing the connection."""

    reason: str


FeedAction = RequestSnapshot | Refetch | Reconnect
Actions = Sequence[FeedAction]

NO_ACTIONS: Actions = ()

_PROBLEM_INCIDENT = {
    ProblemKind.GAP: IncidentKind.GAP,
    ProblemKind.CHECKSUM: IncidentKind.CHECKSUM,
    ProblemKind.MISMATCH: IncidentKind.CHECKSUM,
    ProblemKind.CROSSED: IncidentKind.CHECKSUM,
}

_PROBLEM_COUNTER = {
    ProblemKind.GAP: "gaps",
    ProblemKind.CHECKSUM: "checksum_failures",
    ProblemKind.MISMATCH: "mismatches",
    ProblemKind.CROSSED: "crossed",
}


class FeedSession:
    """The books of one connection of ``adapter``'s venue and the rules they follow.

    ``receive`` is the hot path: O(events in the frame) dispatches, one sink call per
    published snapshot, no allocation beyond the events and snapshots themselves
    unless something other than a publish happened. Everything else is rare.
    """

    def __init__(
        self,
        adapter: VenueAdapter,
        instruments: Iterable[str],
        *,
        sink: FeedSink,
        counters: FeedCounters | None = None,
        capture_depth: int = 0,
        halted: Iterable[str] = (),
    ) -> None:
        self.adapter = adapter
        self.venue = adapter.venue
        self.parser = adapter.new_parser()
        """This connection's own: per-connection protocol state (Coinbase's
        ``sequence_num``) is never shared with another connection open at once."""
        self.sink = sink
        """Where snapshots, states and incidents go; swapped when a standby takes over."""
        self.dispatcher = BookDispatcher(
            adapter, list(instruments), capture_depth=capture_depth, counters=counters
        )
        self.syncs: dict[str, BookSync] = self.dispatcher.syncs
        self.counters = self.dispatcher.counters
        self.capture_depth = capture_depth
        self.ever_live = False
        """Some book of this session went live: the connection was good."""
        self._live: set[str] = set()
        """Instruments this session has set ``live`` (and not ``stale`` since)."""
        self._actions: list[FeedAction] = []
        self._sync_started: dict[str, int] = {}
        self._silence = InstrumentSilence(
            floor=adapter.instrument_silence_floor,
            ceiling=adapter.instrument_silence_timeout,
            learn=adapter.learn_instrument_silence,
        )
        self._last_tick = 0
        self._halted: dict[str, BookSync] = {}
        """Instruments the venue does not trade now: their syncs, out of ``syncs`` (so
        their messages and the watchdog pass them by), kept for their versions."""
        for name in halted:
            self.halt(name)

    # -- instruments ------------------------------------------------------------------

    def add_instrument(self, instrument: str) -> None:
        """Keep a book for an instrument met on the way (replay of an unknown recording)."""
        if instrument not in self.syncs:
            self.syncs[instrument] = self.adapter.new_sync(
                instrument, capture_depth=self.capture_depth
            )

    def is_live(self, instrument: str) -> bool:
        """Whether this session has set ``instrument`` live (its own knowledge)."""
        return instrument in self._live

    def silence_threshold(self, instrument: str) -> float | None:
        """Seconds of silence after which ``instrument`` (live) is stale; ``None``: none
        (its usual rate is not learned yet, and the venue sets no upper bound)."""
        threshold = self._silence.threshold(instrument)
        return None if threshold is None else threshold / SECOND_NS

    def seqs(self) -> dict[str, int]:
        """Each book's version: a session replacing this one continues from it."""
        every = self.syncs | self._halted
        return {name: sync.book.seq for name, sync in every.items()}

    def continue_from(self, seqs: Mapping[str, int]) -> None:
        """Make every book's next ``seq`` exceed the one in ``seqs`` (a connection
        replacing another keeps each instrument's version growing)."""
        for name, sync in (self.syncs | self._halted).items():
            sync.book.continue_from(seqs.get(name, 0))

    def halt(self, instrument: str) -> None:
        """The venue no longer trades ``instrument`` (its metadata says so): its book is
        reset and put aside, its messages ignored, the watchdog passes it by, until
        ``resume``. Its state is the driver's to tell (``halted``, with the reason)."""
        sync = self.syncs.pop(instrument, None)
        if sync is None:
            return
        sync.reset()
        self._halted[instrument] = sync
        self._live.discard(instrument)
        self._sync_started.pop(instrument, None)

    def resume(self, instrument: str, ts: int) -> Actions:
        """``instrument`` trades again: its book is synced afresh (``RequestSnapshot``)."""
        sync = self._halted.pop(instrument, None)
        if sync is None:
            return NO_ACTIONS
        self.syncs[instrument] = sync
        self._restart(instrument, None, ts)
        return self._take_actions()

    def is_halted(self, instrument: str) -> bool:
        return instrument in self._halted

    # -- inputs -----------------------------------------------------------------------

    def start(self, ts: int) -> None:
        """The connection is open and subscribed: every book waits for its snapshot."""
        for name, sync in self.syncs.items():
            sync.reset()
            self._sync_started[name] = ts

    def receive(self, frame: str | bytes, ts_recv: int) -> Actions:
        """One frame as received. O(events in the frame)."""
        self.counters.frames += 1
        handle = self.handle_event
        for event in self.parser.parse(frame):
            handle(event, ts_recv)
        if not self._actions:  # the common case, without a call
            return NO_ACTIONS
        return self._take_actions()

    def receive_event(self, event: FeedEvent, ts: int) -> Actions:
        """One event from elsewhere than a frame (a REST snapshot, replay)."""
        self.handle_event(event, ts)
        return self._take_actions()

    def tick(self, ts: int) -> Actions:
        """The per-instrument watchdog (a pass every second or so, off the hot path):

        - a resync that has not brought its book back within the venue's
          ``resync_timeout`` (a rejected resubscribe, a lost snapshot) starts again;
        - a live book silent past its threshold (``feeds.silence``: learned from its own
          update rate, within the venue's floor and ceiling) is resynced.

        A pass that comes late (the process was stalled, frames may be waiting unread)
        judges no silence.
        """
        adapter = self.adapter
        resync_timeout = adapter.resync_timeout * SECOND_NS
        counts = self.counters.by_instrument
        silence = self._silence
        late = ts - self._last_tick > silence.floor // 2 if self._last_tick else False
        self._last_tick = ts
        for name, sync in self.syncs.items():
            if not sync.live:
                started = self._sync_started.setdefault(name, ts)
                if ts - started > resync_timeout:
                    log.warning(
                        "%s: %s not in sync after %.0fs; retrying",
                        self.venue,
                        name,
                        (ts - started) / SECOND_NS,
                    )
                    self._restart(name, None, ts)
                continue
            if silence.silent(name, counts.get(name, 0), ts) and not late:
                threshold = silence.threshold(name) or 0
                detail = f"no book message for {threshold / SECOND_NS:g}s"
                silence.resynced(name, ts)
                self._resync(name, SyncProblem(ProblemKind.SILENT, detail), ts)
        return self._take_actions()

    def resync(self, instrument: str, problem: SyncProblem, ts: int) -> Actions:
        """Resync one instrument now (an operator's request): stale, reset, refetched.
        A halted instrument stays as it is."""
        if instrument not in self.syncs:
            return NO_ACTIONS
        self._resync(instrument, problem, ts)
        return self._take_actions()

    def connection_lost(self, problem: SyncProblem, ts: int) -> None:
        """The connection ended: every instrument it had live is ``stale``."""
        for name in sorted(self._live):
            self._set_state(name, InstrumentState.STALE, str(problem), ts)
        self._live.clear()

    # -- a standby connection taking over ---------------------------------------------

    def takeover_snapshots(
        self, seqs: Mapping[str, int], latest: Mapping[str, BookSnapshot], ts: int
    ) -> list[BookSnapshot] | None:
        """A snapshot of every book, each ``seq`` continuing from ``seqs``, for this
        session to take over from another; ``None`` (and nothing changed) unless every
        book is live, uncrossed and has a ``latest`` snapshot (its timestamps)."""
        for name, sync in self.syncs.items():
            if name not in self._live or not sync.live or name not in latest:
                return None
            if sync.book.is_crossed():
                return None
        self.continue_from(seqs)
        return [
            sync.book.snapshot(latest[name].ts_event, latest[name].ts_recv, ts)
            for name, sync in self.syncs.items()
        ]

    # -- the decision table -----------------------------------------------------------

    def handle_event(self, event: FeedEvent, ts: int) -> None:
        """Apply one event and act on what its sync reported (see the module doc)."""
        instrument, result = self.dispatcher.handle(event, ts)
        if instrument is not None:
            self._act(instrument, result, ts)
        elif isinstance(event, MalformedEvent):
            log.warning("%s: malformed frame (%s): %.200s", self.venue, event.reason, event.raw)
        elif isinstance(event, ConnectionGapEvent):
            problem = SyncProblem(ProblemKind.GAP, event.detail)
            for name in list(self.syncs):
                self._resync(name, problem, ts)
        elif isinstance(event, VenueErrorEvent):
            self.counters.venue_errors += 1
            self._incident(event.instrument, IncidentKind.ERROR, event.message, ts)
            if event.reconnect:
                self._actions.append(Reconnect(event.message))

    def _act(self, instrument: str, result: SyncResult, ts: int) -> None:
        snapshot = result.snapshot
        if snapshot is not None:
            self.sink.publish(snapshot)
            if instrument not in self._live:
                self._went_live(instrument, snapshot, ts)
        elif result.problem is not None:
            self._resync(instrument, result.problem, ts)
        elif result.refetch:
            self.counters.refetches += 1
            self._actions.append(Refetch(instrument))

    def _went_live(self, instrument: str, snapshot: BookSnapshot, ts: int) -> None:
        self._live.add(instrument)
        self.ever_live = True
        self._set_state(instrument, InstrumentState.LIVE, "in sync", ts)
        self._incident(instrument, IncidentKind.LIVE, f"seq {snapshot.seq}", ts)

    def _resync(self, instrument: str, problem: SyncProblem, ts: int) -> None:
        """Mark one instrument stale and bring it back; the others are not touched."""
        counters = self.counters
        counters.resyncs += 1
        counter = _PROBLEM_COUNTER.get(problem.kind)
        if counter is not None:
            setattr(counters, counter, getattr(counters, counter) + 1)
        log.warning(
            "%s: %s is stale (%s); resyncing it",
            self.venue,
            instrument,
            problem,
            extra={"venue": self.venue, "instrument": instrument, "problem": problem.kind.value},
        )
        self._live.discard(instrument)
        kind = _PROBLEM_INCIDENT.get(problem.kind, IncidentKind.STALE)
        self._incident(instrument, kind, str(problem), ts)
        self._set_state(instrument, InstrumentState.STALE, str(problem), ts)
        self._incident(instrument, IncidentKind.RESYNC, "resync started", ts)
        self._restart(instrument, problem, ts)

    def _restart(self, instrument: str, problem: SyncProblem | None, ts: int) -> None:
        """Reset the book and ask for a fresh snapshot."""
        self.syncs[instrument].reset()
        self._sync_started[instrument] = ts
        self._actions.append(RequestSnapshot(instrument, problem))

    # -- outputs ----------------------------------------------------------------------

    def _set_state(self, instrument: str, state: InstrumentState, reason: str, ts: int) -> None:
        self.sink.set_status(InstrumentStatus(instrument, state, reason, ts))

    def _incident(self, instrument: str | None, kind: IncidentKind, detail: str, ts: int) -> None:
        self.sink.incident(FeedIncident(ts, self.venue, instrument, kind, detail))

    def _take_actions(self) -> Actions:
        actions = self._actions
        if not actions:
            return NO_ACTIONS
        self._actions = []
        return actions
