"""The edge's core, sans-I/O: bus messages and clock ticks in, writes to a ``FeedSink``
and state requests out.

Per instrument it follows ONE source (an ingest process) at a time, the first it
heard of; other sources of the same instrument (a hot standby) are tracked but not
applied. It then checks every message's ``bus_seq``:

- the next one: applied;
- a jump: the messages between are counted as ``gaps``, the newer message is applied
  (a book message is the whole top of book, never a delta) and the instrument is
  repaired by a state request to its source (a lost state change is restored);
- an older one: dropped; counted as ``reordered`` if it was one of the missing, else
  ``late``;
- a heartbeat announcing more messages than arrived: the tail was lost, repair.

``seq`` never goes back on the sink: every instrument keeps the last seq written and an
offset added to its source's seqs, recomputed when it starts following a source (a
failover, an ingest restart), so a new source whose seqs are lower continues above the
last one written; with one ingest the offset is 0 and seqs are the ingest's own.

``tick(now)`` (10 times a second) is the watchdog: a followed source silent for
``failover_after`` (or gone with ``BYE``, or not live while another source is) is
replaced by another fresh source of that instrument; with none, after ``stale_after``
the instrument is marked ``stale`` with the reason, and it returns by itself when its
source is heard again (a state request restores its book and state).

Cost per book message: one decode (``bus.codec``), four dict lookups, one
``sink.publish``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from book.sink import FeedSink
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from bus.codec import (
    BookMessage,
    BusMessage,
    Bye,
    Heartbeat,
    StateReply,
    StatusMessage,
    decode,
)
from bus.exceptions import DecodeError

log = logging.getLogger(__name__)

REQUEST_RETRY = 0.25
"""Seconds before an unanswered state request is sent again."""
MAX_MISSING = 256
"""Missing bus_seqs remembered per instrument (to tell reordered from lost)."""


@dataclass(slots=True)
class EdgeCounters:
    messages: int = 0
    gaps: int = 0
    """Messages found missing by ``bus_seq`` (lost, or arriving later: ``reordered``)."""
    reordered: int = 0
    """Missing messages that arrived after a newer one (dropped: the newer state won)."""
    late: int = 0
    """Duplicate or old messages dropped."""
    repairs: int = 0
    """Instruments restored from a state reply after a gap, a join or a failover."""
    requests: int = 0
    """State requests sent."""
    failovers: int = 0
    stale_marks: int = 0
    """Times an instrument went stale because its source fell silent."""
    bad_messages: int = 0
    last_message_ns: int = 0
    """Wall clock of the last bus message received (0: none yet)."""


@dataclass(slots=True)
class SourceView:
    """What the edge knows of one ingest process."""

    id: int
    last_heard: float
    announced: dict[str, int] = field(default_factory=dict)
    """Instrument -> messages the source said it has sent (heartbeat, or seen)."""
    states: dict[str, InstrumentState] = field(default_factory=dict)
    gone: bool = False
    """It said ``BYE``."""


@dataclass(slots=True)
class Track:
    """One instrument as the edge follows it."""

    instrument: str
    source: int | None = None
    bus_seq: int | None = None
    """Last bus_seq taken from ``source`` (``None``: waiting for its first message)."""
    offset: int | None = 0
    """Added to ``source``'s seqs; ``None``: computed at its next book."""
    served_seq: int = -1
    """The last seq written to the sink."""
    status: InstrumentStatus | None = None
    """``source``'s last state of the instrument."""
    status_seq: int = -1
    """The bus_seq that state came with (a reply never replaces a newer state)."""
    bus_stale: bool = False
    """Marked stale by the edge (its source fell silent)."""
    missing: set[int] = field(default_factory=set)
    repair_needed: bool = False
    repair_until: int | None = None
    """A reply repairs only if its bus_seq reaches this (``None``: any reply)."""
    requested_at: float | None = None


class Follower:
    """Feed it ``receive(payload, now)``, ``state_reply(reply, now)`` and ``tick(now)``
    (``now``: monotonic seconds); send what ``take_requests(now)`` returns."""

    def __init__(
        self,
        sink: FeedSink,
        *,
        stale_after: float,
        failover_after: float | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        on_hop: Callable[[int], None] | None = None,
    ) -> None:
        if stale_after <= 0:
            raise ValueError("stale_after must be positive")
        self.sink = sink
        self.stale_after = stale_after
        self.failover_after = failover_after if failover_after is not None else stale_after / 2
        self.clock_ns = clock_ns
        self.on_hop = on_hop
        """Told, per applied book, ns from the ingest's snapshot to now (the bus hop)."""
        self.counters = EdgeCounters()
        self.sources: dict[int, SourceView] = {}
        self.tracks: dict[str, Track] = {}
        self._repairs_waiting = False

    # -- input ------------------------------------------------------------------------------

    def receive(self, payload: bytes, now: float) -> None:
        """One message from the bus subscription. Never raises for bad input (counted)."""
        counters = self.counters
        counters.messages += 1
        ts = counters.last_message_ns = self.clock_ns()
        try:
            message = decode(payload)
        except DecodeError as exc:
            counters.bad_messages += 1
            if counters.bad_messages == 1 or counters.bad_messages % 1000 == 0:
                log.warning("bad bus message (%d so far): %s", counters.bad_messages, exc)
            return
        self.dispatch(message, now, ts)

    def dispatch(self, message: BusMessage, now: float, ts: int) -> None:
        if isinstance(message, BookMessage):
            self._book(message, now, ts)
        elif isinstance(message, StatusMessage):
            self._status(message, now)
        elif isinstance(message, Heartbeat):
            self._heartbeat(message, now)
        elif isinstance(message, Bye):
            self._heard(message.source, now).gone = True
            log.info("bus source %016x stopped", message.source)
            self.tick(now)
        elif isinstance(message, StateReply):
            self.state_reply(message, now)
        # HELLO and REQUEST are for ingests: nothing to do.

    def state_reply(self, reply: StateReply, now: float) -> None:
        """A source's answer to a state request: apply what is not older than what the
        edge has, and close the gaps it covers."""
        self._heard(reply.source, now)
        replied: dict[str, int] = {}
        for message in reply.messages:
            if isinstance(message, BookMessage):
                name = message.snapshot.instrument
                ts = message.snapshot.ts_recv
            else:
                name = message.status.instrument
                ts = message.status.ts
            track = self._track(name, ts)
            if track.source is None:
                self._adopt(track, reply.source, request=False)
            if track.source != reply.source:
                continue
            replied[name] = message.bus_seq
            # A reply may be older than stream messages already taken (it travels on
            # another subscription): a book older than the one served is skipped by
            # its seq, a state older than the one applied by its bus_seq.
            if isinstance(message, BookMessage):
                self._apply_book(track, message.snapshot)
            elif message.bus_seq >= track.status_seq:
                self._apply_status(track, message.status, message.bus_seq)
            if track.bus_seq is None or message.bus_seq > track.bus_seq:
                track.bus_seq = message.bus_seq
        for name, bus_seq in replied.items():
            track = self.tracks[name]
            if track.repair_needed and (
                track.repair_until is None or bus_seq >= track.repair_until
            ):
                track.repair_needed = False
                track.repair_until = None
                track.requested_at = None
                self.counters.repairs += 1

    def reconnected(self, now: float) -> None:
        """The bus connection came back: messages may have been lost meanwhile."""
        for track in self.tracks.values():
            if track.source is not None:
                self._need_repair(track, None)

    # -- the watchdog ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Fail over from silent or gone sources, mark instruments stale after
        ``stale_after`` without data, ask for repair when data flows again."""
        for track in self.tracks.values():
            if track.source is None:
                continue
            source = self.sources[track.source]
            silent = now - source.last_heard
            dead = source.gone or silent >= self.failover_after
            unhealthy = track.status is not None and track.status.state is not InstrumentState.LIVE
            if dead or unhealthy:
                alternative = self._alternative(track, now, need_live=not dead)
                if alternative is not None:
                    self.counters.failovers += 1
                    log.info(
                        "%s: following bus source %016x instead of %016x",
                        track.instrument,
                        alternative.id,
                        source.id,
                    )
                    self._adopt(track, alternative.id, request=True)
                    continue
            if source.gone or silent >= self.stale_after:
                if not track.bus_stale:
                    self._mark_stale(track, source, silent)
            elif track.bus_stale and not track.repair_needed:
                self._need_repair(track, None)

    def take_requests(self, now: float) -> dict[int, list[str]]:
        """Instruments to ask each source for (not asked within ``REQUEST_RETRY``)."""
        if not self._repairs_waiting:
            return {}
        requests: dict[int, list[str]] = {}
        waiting = False
        for track in self.tracks.values():
            if not track.repair_needed or track.source is None:
                continue
            if track.requested_at is not None and now - track.requested_at < REQUEST_RETRY:
                waiting = True
                continue
            track.requested_at = now
            requests.setdefault(track.source, []).append(track.instrument)
            waiting = True
        self._repairs_waiting = waiting
        self.counters.requests += len(requests)
        return requests

    # -- views ------------------------------------------------------------------------------

    def live_sources(self, now: float) -> int:
        return sum(
            1
            for source in self.sources.values()
            if not source.gone and now - source.last_heard < self.stale_after
        )

    # -- internals --------------------------------------------------------------------------

    def _book(self, message: BookMessage, now: float, ts: int) -> None:
        source = self._heard(message.source, now)
        snapshot = message.snapshot
        track = self._track(snapshot.instrument, snapshot.ts_recv)
        _announce(source, snapshot.instrument, message.bus_seq)
        if track.source is None:
            self._adopt(track, message.source, request=True)
        if track.source != message.source or not self._in_sequence(track, message.bus_seq):
            return
        if self._apply_book(track, snapshot) and self.on_hop is not None:
            self.on_hop(ts - snapshot.ts_book)

    def _status(self, message: StatusMessage, now: float) -> None:
        source = self._heard(message.source, now)
        status = message.status
        track = self._track(status.instrument, status.ts)
        _announce(source, status.instrument, message.bus_seq)
        source.states[status.instrument] = status.state
        if track.source is None:
            self._adopt(track, message.source, request=True)
        if track.source != message.source or not self._in_sequence(track, message.bus_seq):
            return
        self._apply_status(track, status, message.bus_seq)

    def _heartbeat(self, heartbeat: Heartbeat, now: float) -> None:
        source = self._heard(heartbeat.source, now)
        source.announced = dict(heartbeat.instruments)
        for name, sent in heartbeat.instruments.items():
            track = self._track(name, heartbeat.ts)
            if track.source is None:
                self._adopt(track, source.id, request=True)
            elif track.source == source.id and track.bus_seq is not None and sent > track.bus_seq:
                self._missed(track, sent + 1)
                track.bus_seq = sent

    def _in_sequence(self, track: Track, bus_seq: int) -> bool:
        last = track.bus_seq
        if last is None or bus_seq == last + 1:
            track.bus_seq = bus_seq
            return True
        if bus_seq > last:
            self._missed(track, bus_seq)
            track.bus_seq = bus_seq
            return True
        if bus_seq in track.missing:
            track.missing.discard(bus_seq)
            self.counters.reordered += 1
        else:
            self.counters.late += 1
        return False

    def _missed(self, track: Track, next_seq: int) -> None:
        """Messages ``track.bus_seq + 1 .. next_seq - 1`` did not arrive."""
        assert track.bus_seq is not None
        first = track.bus_seq + 1
        self.counters.gaps += next_seq - first
        if len(track.missing) + next_seq - first > MAX_MISSING:
            track.missing.clear()
        if next_seq - first <= MAX_MISSING:
            track.missing.update(range(first, next_seq))
        self._need_repair(track, next_seq - 1)

    def _apply_book(self, track: Track, snapshot: BookSnapshot) -> bool:
        if track.offset is None:
            track.offset = max(0, track.served_seq + 1 - snapshot.seq)
        seq = snapshot.seq + track.offset
        if seq <= track.served_seq:
            return False
        if track.offset:
            snapshot = replace(snapshot, seq=seq)
        track.served_seq = seq
        self.sink.publish(snapshot)
        return True

    def _apply_status(self, track: Track, status: InstrumentStatus, bus_seq: int) -> None:
        track.status = status
        track.status_seq = bus_seq
        track.bus_stale = False
        self.sink.set_status(status)

    def _mark_stale(self, track: Track, source: SourceView, silent: float) -> None:
        if source.gone:
            reason = "bus: its ingest stopped"
        else:
            reason = f"bus: no data from its ingest for {int(silent * 1000)} ms"
        track.bus_stale = True
        self.counters.stale_marks += 1
        self.sink.set_status(
            InstrumentStatus(track.instrument, InstrumentState.STALE, reason, self.clock_ns())
        )

    def _alternative(self, track: Track, now: float, *, need_live: bool) -> SourceView | None:
        """Another fresh source of the instrument: a live one first, the latest heard."""
        candidates = [
            source
            for source in self.sources.values()
            if source.id != track.source
            and not source.gone
            and now - source.last_heard < self.failover_after
            and track.instrument in source.announced
        ]
        live = [s for s in candidates if s.states.get(track.instrument) is InstrumentState.LIVE]
        if live or need_live:
            candidates = live
        return max(candidates, key=lambda source: source.last_heard, default=None)

    def _adopt(self, track: Track, source: int, *, request: bool) -> None:
        track.source = source
        track.bus_seq = None
        track.offset = None
        track.status = None
        track.status_seq = -1
        track.missing.clear()
        if request:
            self._need_repair(track, None)

    def _need_repair(self, track: Track, until: int | None) -> None:
        if track.repair_needed and track.repair_until is not None and until is not None:
            until = max(until, track.repair_until)
        elif track.repair_needed and track.repair_until is None:
            until = None
        track.repair_needed = True
        track.repair_until = until
        self._repairs_waiting = True

    def _heard(self, source_id: int, now: float) -> SourceView:
        source = self.sources.get(source_id)
        if source is None:
            source = self.sources[source_id] = SourceView(source_id, now)
            log.info("bus source %016x joined", source_id)
        source.last_heard = now
        source.gone = False
        return source

    def _track(self, instrument: str, ts: int) -> Track:
        track = self.tracks.get(instrument)
        if track is None:
            track = self.tracks[instrument] = Track(instrument)
            self.sink.add_instrument(instrument, ts)
        return track


def _announce(source: SourceView, instrument: str, bus_seq: int) -> None:
    if bus_seq > source.announced.get(instrument, 0):
        source.announced[instrument] = bus_seq
