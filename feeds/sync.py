"""Per-instrument book synchronisation: the sans-I/O single writer of one L2 book.

A venue's ``BookSync`` subclass applies that venue's sequence and checksum rules. The
runner feeds it events and acts on each ``SyncResult``: publish the snapshot, or mark
the instrument stale and resync it (and only it) when a ``SyncProblem`` is reported.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
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


class BookSync(ABC):
    """Owns one ``L2Book``; the only code that mutates it."""

    def __init__(self, instrument: str, *, capture_depth: int = 0) -> None:
        self.instrument = instrument
        self.book = L2Book(instrument, capture_depth=capture_depth)
        self.live = False
        #: Book states found equal to the venue's own view (checksum, bookTicker).
        self.verified = 0

    def reset(self) -> None:
        """Forget the book (its ``seq`` keeps growing) and wait for a new snapshot."""
        self.book.clear()
        self.live = False

    @abstractmethod
    def on_snapshot(self, event: BookSnapshotEvent, ts_recv: int) -> SyncResult: ...

    @abstractmethod
    def on_delta(self, event: BookDeltaEvent, ts_recv: int) -> SyncResult: ...

    def on_top_of_book(self, event: TopOfBookEvent) -> SyncResult:
        """Cross-check against the venue's own best bid/ask where the venue allows it."""
        return NOTHING

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
