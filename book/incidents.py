"""Feed incidents: what happened to a venue connection or an instrument's book.

Ingest reports them to its ``FeedSink``; storage keeps them as ``feed_events``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class IncidentKind(StrEnum):
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    GAP = "gap"
    CHECKSUM = "checksum"
    RESYNC = "resync"
    STALE = "stale"
    LIVE = "live"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class FeedIncident:
    ts: int
    venue: str
    instrument: str | None
    kind: IncidentKind
    detail: str


IncidentListener = Callable[[FeedIncident], None]
"""Told of each incident a ``FeedSink`` received (``BookRegistry.on_incident``)."""
