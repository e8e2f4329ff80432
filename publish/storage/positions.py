"""The position book's way to storage: one ``PositionStore`` interface, rows derived here.

``FlushedPositionStore`` writes through the group-commit flusher (a write is durable when
its ``Commit`` is resolved; a new position's id is checked inside that same commit, so an
open costs no storage round trip of its own) and reads through the backend; positions become
``PositionRow``s only at this boundary.
"""

from __future__ import annotations

from typing import Protocol

from publish.position import Position
from publish.storage.backend import StorageBackend
from publish.storage.flusher import Commit, InsertOutcome, StorageFlusher, StorageHealth
from publish.storage.rows import PositionRow


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
        self._flusher.add_new_position(position_row(position), commit)

    def write(self, position: Position, commit: Commit[None]) -> None:
        self._flusher.add_position(position_row(position), commit)

    async def load_open(self) -> list[Position]:
        return [position_of(row) for row in await self._backend.load_open_positions()]


def position_row(position: Position) -> PositionRow:
    """The ``positions`` row of ``position``."""
    # Positional, in the row's field order: keywords through a class call cost a dict
    # per row.
    return PositionRow(
        position.id,
        position.account,
        position.instrument,
        position.side,
        position.qty,
        position.entry_price,
        position.opened_ts,
        position.closed_ts,
    )


def position_of(row: PositionRow) -> Position:
    """The position a stored row holds."""
    return Position(
        id=row.id,
        account=row.account,
        instrument=row.instrument,
        side=row.side,
        qty=row.qty,
        entry_price=row.entry_px,
        opened_ts=row.opened_ts,
        closed_ts=row.closed_ts,
    )
