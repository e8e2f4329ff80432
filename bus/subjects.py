"""Subject names on the bus, under one configurable prefix (``[bus].prefix``).

    <prefix>.book.<venue>.<SYMBOL>      every published snapshot of the instrument
    <prefix>.status.<venue>.<SYMBOL>    every state change of the instrument
    <prefix>.ingest.heartbeat           each ingest, 4 times a second (and on hello)
    <prefix>.ingest.hello               an edge that joins asks for heartbeats now
    <prefix>.ingest.<source>.state      request/reply: one ingest's current state

A character NATS reserves inside a token (``.``, ``*``, ``>``, whitespace) is written
as ``_`` in a subject; the payload carries the exact instrument id, so the subject only
routes. An edge subscribes to ``<prefix>.>`` once, so it sees a source's messages and
heartbeats in the order they were sent.
"""

from __future__ import annotations

import re

from book.instruments import split_instrument
from bus.exceptions import SubjectError

_RESERVED = re.compile(r"[.*>\s]")


def token(text: str) -> str:
    """``text`` as one subject token."""
    return _RESERVED.sub("_", text) or "_"


class Subjects:
    """The subjects of one prefix."""

    __slots__ = ("prefix", "heartbeat", "hello", "everything", "_books", "_statuses")

    def __init__(self, prefix: str) -> None:
        parts = prefix.split(".")
        if not prefix or any(not part or _RESERVED.search(part) for part in parts):
            raise SubjectError(
                f"bus prefix must be dot-separated tokens without '*', '>' or spaces, "
                f"got {prefix!r}"
            )
        self.prefix = prefix
        self.heartbeat = f"{prefix}.ingest.heartbeat"
        self.hello = f"{prefix}.ingest.hello"
        self.everything = f"{prefix}.>"
        self._books: dict[str, str] = {}
        self._statuses: dict[str, str] = {}

    def book(self, instrument: str) -> str:
        """``<prefix>.book.<venue>.<SYMBOL>``; O(1) after the instrument's first call."""
        subject = self._books.get(instrument)
        if subject is None:
            subject = self._books[instrument] = self._instrument_subject("book", instrument)
        return subject

    def status(self, instrument: str) -> str:
        subject = self._statuses.get(instrument)
        if subject is None:
            subject = self._statuses[instrument] = self._instrument_subject("status", instrument)
        return subject

    def state(self, source: int) -> str:
        """Where ``source`` answers state requests."""
        return f"{self.prefix}.ingest.{source:016x}.state"

    def _instrument_subject(self, kind: str, instrument: str) -> str:
        venue, symbol = split_instrument(instrument)
        return f"{self.prefix}.{kind}.{token(venue)}.{token(symbol)}"
