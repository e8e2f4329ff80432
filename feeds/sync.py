"""Per-instrument book synchronisation: the sans-I/O single writer of one L2 book.

A venue's ``BookSync`` subclass applies that venue's sequence and checksum rules. The
runner feeds it events and acts on each ``SyncResult``: publish the snapshot, or mark
the instrument stale and resync it (and only it) when a ``SyncProblem`` is reported.
Where the venue states its own view of the book (a checksum, a best bid/ask), the
subclass compares the book with it in ``_verify`` and publishes through
``_verified_publish``: verify, then publish, written once here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum, StrEnum
from time import time_ns

from book.l2 import L2Book
from book.snapshot import BookSnapshot
from feeds.events import BookDeltaEvent, BookSnapshotEvent, TopOfBookEvent


class ProblemKind(StrEnum):
    GAP = "gap"
    CHECKSUM = "checksum"
    CROSSED = "crossed"
    MISMATCH = "mismatch"
    SILENT = "silent"
    DISCONNECTED = "disconnected"
    REQUESTED = "requested"
    """An operator asked for a resync (``admin.resync``)."""


@dataclass(frozen=True, slots=True)
class SyncProblem:
    """Why a book can no longer be trusted; the instrument must be resynced."""

    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one event did: a snapshot to publish, a problem, or a request to refetch.

    ``refetch`` asks for a new REST snapshot without declaring the book bad (Binance:
    the snapshot was older than the first buffered stream event).
    """

    snapshot: BookSnapshot | None = None
    problem: SyncProblem | None = None
    refetch: bool = False


NOTHING = SyncResult()
REFETCH = SyncResult(refetch=True)


class Verdict(Enum):
    """What comparing a book with the venue's own view of it found (short of a problem)."""

    AGREES = "agrees"
    """Equal to the venue's view: publish it, and count it verified."""
    UNCHECKED = "unchecked"
    """The venue stated no view to compare with: publish it."""
    CANNOT_TELL = "cannot tell"
    """The view cannot be compared yet (Kraken: the pair's precision is unknown): keep
    the book up to date but hold it back; a later message verifies it."""


class BookSync(ABC):
    """Owns one ``L2Book``; the only code that mutates it."""

    def __init__(self, instrument: str, *, capture_depth: int = 0) -> None:
        self.instrument = instrument
        self.book = L2Book(instrument, capture_depth=capture_depth)
        self.live = False
        #: Book states found equal to the venue's own view (checksum, bookTicker).
        self.verified = 0
        #: The venue's update id the book is at (Binance ``u``, Bybit ``u``, OKX
        #: ``seqId``); ``None`` while waiting for a snapshot, or where the venue has none.
        self.last_update_id: int | None = None

    def reset(self) -> None:
        """Forget the book (its ``seq`` keeps growing) and wait for a new snapshot."""
        self.book.clear()
        self.live = False
        self.last_update_id = None

    @abstractmethod
    def on_snapshot(self, event: BookSnapshotEvent, ts_recv: int) -> SyncResult: ...

    @abstractmethod
    def on_delta(self, event: BookDeltaEvent, ts_recv: int) -> SyncResult: ...

    def on_top_of_book(self, event: TopOfBookEvent) -> SyncResult:
        """Cross-check against the venue's own best bid/ask where the venue allows it."""
        return NOTHING

    def _verify(self, event: BookSnapshotEvent | BookDeltaEvent) -> Verdict | SyncProblem:
        """Compare the book, just changed by ``event``, with the venue's own view of it.

        The venue's rules: a subclass whose venue states such a view overrides this."""
        return Verdict.UNCHECKED

    def _verified_publish(
        self, event: BookSnapshotEvent | BookDeltaEvent, ts_recv: int
    ) -> SyncResult:
        """Verify the book after ``event`` (``_verify``), then publish it."""
        held = self._held(self._verify(event))
        return self._publish(event.ts_event, ts_recv) if held is None else held

    def _held(self, verdict: Verdict | SyncProblem) -> SyncResult | None:
        """Count an agreement; what to return instead of publishing (the problem, or
        nothing while the book cannot be verified yet), ``None`` if it may be published."""
        if isinstance(verdict, SyncProblem):
            return SyncResult(problem=verdict)
        if verdict is Verdict.AGREES:
            self.verified += 1
        elif verdict is Verdict.CANNOT_TELL:
            return NOTHING
        return None

    def _publish(self, ts_event: int, ts_recv: int) -> SyncResult:
        """Freeze the book after a whole message; a crossed book is a problem, not a snapshot."""
        book = self.book
        if book.is_crossed():
            return SyncResult(
                problem=SyncProblem(
                    ProblemKind.CROSSED, f"best bid {book.best_bid()} >= best ask {book.best_ask()}"
                )
            )
        return SyncResult(snapshot=book.snapshot(ts_event, ts_recv, time_ns()))
