"""The position book's way to storage: one ``PositionStore`` interface.

``FlushedPositionStore`` writes through the group-commit flusher (a write is durable when
its ``Commit`` is resolved; a new position's id is checked inside that same commit, so an
open costs no storage round trip of its own) and reads through the backend. A position is
its own row (``publish.storage.rows.PositionRow``): nothing is copied on the way.
"""

from __future__ import annotations

from typing import Protocol

from publish.position import Position
from publish.storage.backend import StorageBackend
from publish.storage.flusher import Commit, InsertOutcome, StorageFlusher, StorageHealth


class PositionStore(Protocol):
    """Where positions are kept durably."""

    @property
    def health(self) -> StorageHealth:
        """``degraded`` while writes fail: new changes are refused at once."""
        ...

    def insert(self, position: Position, commit: Commit[InsertOutcome]) -> None:
        """Store the new ``position`` unless its account ever stored another position
        with its id (open, closed, or closed and archived); ``commit`` is resolved once
        that is decided and durable: ``WRITTEN`` (the very same position found stored
        counts, an earlier attempt's) or ``ID_TAKEN`` (nothing written). Cancelling a
        future only stops the wait."""
        ...

    def write(self, position: Position, commit: Commit[None]) -> None:
        """Store a change of the stored ``position`` (replacing its earlier state);
        ``commit`` is resolved once it is durable. Cancelling a future only stops the
        wait."""
        ...

    async def load_open(self) -> list[Position]:
        """Every open position, oldest first."""
        ...


class FlushedPositionStore:
    """A ``PositionStore`` over a flusher (writes) and its backend (reads)."""

    def __init__(self, flusher: StorageFlusher, backend: StorageBackend) -> None:
        self._flusher = flusher
        self._backend = backend

    @property
    def health(self) -> StorageHealth:
        return self._flusher.health

    def insert(self, position: Position, commit: Commit[InsertOutcome]) -> None:
        self._flusher.add_new_position(position, commit)

    def write(self, position: Position, commit: Commit[None]) -> None:
        self._flusher.add_position(position, commit)

    async def load_open(self) -> list[Position]:
        return await self._backend.load_open_positions()
