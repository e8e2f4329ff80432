"""Health of one instrument's book, as told to subscribers and stored as feed events."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class InstrumentState(StrEnum):
    """``syncing`` until the first bridged snapshot, ``live`` while every check passes,
    ``stale`` after a gap, checksum failure, crossed book or silence (until resynced);
    ``halted`` when the venue's metadata says the instrument does not trade (halted or
    delisted: no book kept, the reason says which; at start, or after a metadata refresh,
    which also brings it back to ``syncing`` when it trades again)."""

    SYNCING = "syncing"
    LIVE = "live"
    STALE = "stale"
    HALTED = "halted"


@dataclass(frozen=True, slots=True)
class InstrumentStatus:
    instrument: str
    state: InstrumentState
    reason: str
    ts: int
