"""Replay recorded venue traffic through the real handlers, with no network.

The same ``FeedSession`` as the live runner sees the recorded frames in order; REST
snapshots come from the recording's HTTP frames. The summary counts book messages per
instrument and lists every venue symbol that could not be named (its messages were
not replayed). A problem (gap, checksum, mismatch)
resyncs that instrument as live would: its book is reset and waits for the next
snapshot in the recording (the session's requests for one are answered by the
recording, or not at all). Each recorded connection's frames are parsed by a parser of
its own, made afresh when the connection opens (a reconnect numbers its messages anew).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from book.incidents import FeedIncident
from book.snapshot import BookSnapshot
from book.status import InstrumentStatus
from feeds.events import FeedEvent
from feeds.recordings import FrameKind, RecordedFrame
from feeds.session import FeedSession, RequestSnapshot
from feeds.symbols import DiscoveringSymbolMap
from feeds.sync import SyncProblem
from feeds.venue import FrameParser, VenueAdapter


@dataclass(frozen=True, slots=True)
class ReplayProblem:
    ts: int
    instrument: str
    problem: SyncProblem


class Replay:
    """Runs frames through one venue's session; ``snapshots`` yields each published book.

    The replay is its session's sink: it keeps each instrument's latest snapshot.
    """

    def __init__(self, adapter: VenueAdapter, *, capture_depth: int = 10) -> None:
        self.adapter = adapter
        self.session = FeedSession(
            adapter, adapter.symbols.instruments(), sink=self, capture_depth=capture_depth
        )
        self.latest: dict[str, BookSnapshot] = {}
        self.problems: list[ReplayProblem] = []
        self.frames = 0
        self.published = 0
        self._published: list[BookSnapshot] = []
        self._parsers: dict[int, FrameParser] = {}
        """Each recorded connection's parser (``RecordedFrame.conn``)."""

    def snapshots(self, frames: Iterable[RecordedFrame]) -> Iterator[BookSnapshot]:
        """Every book published while replaying ``frames``, in order."""
        session = self.session
        for frame in frames:
            self.frames += 1
            for event in self._events(frame):
                instrument = getattr(event, "instrument", None)
                if isinstance(instrument, str):
                    session.add_instrument(instrument)
                for action in session.receive_event(event, frame.ts):
                    if isinstance(action, RequestSnapshot) and action.problem is not None:
                        self.problems.append(
                            ReplayProblem(frame.ts, action.instrument, action.problem)
                        )
                if self._published:
                    yield from self._published
                    self._published.clear()

    def _events(self, frame: RecordedFrame) -> list[FeedEvent]:
        if frame.kind is FrameKind.CONNECT:
            self._parsers[frame.conn] = self.adapter.new_parser()
            return []
        if frame.kind is FrameKind.RECV:
            parser = self._parsers.get(frame.conn)
            if parser is None:  # a recording that does not mark connects
                parser = self._parsers[frame.conn] = self.adapter.new_parser()
            return parser.parse(frame.data)
        if frame.kind is FrameKind.HTTP and self.adapter.rest_snapshots:
            instrument = self.adapter.snapshot_instrument(frame.url)
            if instrument is None:
                return []
            try:
                return [self.adapter.parse_snapshot(instrument, frame.data)]
            except ValueError:
                self.session.counters.malformed += 1
                return []
        return []

    # -- the session's sink ----------------------------------------------------------

    def add_instrument(self, instrument: str, ts: int) -> None:
        pass

    def publish(self, snapshot: BookSnapshot) -> None:
        self.latest[snapshot.instrument] = snapshot
        self.published += 1
        self._published.append(snapshot)

    def set_status(self, status: InstrumentStatus) -> None:
        pass

    def incident(self, incident: FeedIncident) -> None:
        pass

    def summary(self) -> dict[str, object]:
        counters = self.session.counters
        syncs = self.session.syncs
        return {
            "type": "summary",
            "venue": self.adapter.venue,
            "frames": self.frames,
            "book_messages": counters.book_messages,
            "published": self.published,
            "verified": sum(sync.verified for sync in syncs.values()),
            "gaps": counters.gaps,
            "checksum_failures": counters.checksum_failures,
            "mismatches": counters.mismatches,
            "crossed": counters.crossed,
            "resyncs": counters.resyncs,
            "refetches": counters.refetches,
            "malformed": counters.malformed,
            "live": sorted(name for name, sync in syncs.items() if sync.live),
            "not_live": sorted(name for name, sync in syncs.items() if not sync.live),
            "messages": dict(sorted(counters.by_instrument.items())),
            "unresolved": dict(sorted(self.unresolved().items())),
        }

    def unresolved(self) -> dict[str, int]:
        """Venue symbols of the recording that could not be named (none when the
        instruments were configured), with the number of messages naming each."""
        symbols = self.adapter.symbols
        return dict(symbols.unresolved) if isinstance(symbols, DiscoveringSymbolMap) else {}
