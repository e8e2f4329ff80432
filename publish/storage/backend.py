"""The interface every storage backend implements (``SqliteBackend``, ``PostgresBackend``).

A backend only knows how to write one ``Batch`` atomically and read positions back;
batching windows, retries, bounds and group-commit acks live in ``StorageFlusher``, so
each backend stays a thin adapter: SQLite runs ``executemany`` in its writer thread,
PostgreSQL will ``COPY`` the append-only tables and upsert positions, both inside one
transaction per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from publish.storage.rows import BboRow, FeedEventRow, PositionRow


@dataclass(frozen=True, slots=True)
class Batch:
    """The rows of one flush window, written in one transaction.

    ``positions`` are upserts in order: a position opened and closed within one window
    ends up closed. ``bbo`` and ``feed_events`` are appended.
    """

    bbo: list[BboRow] = field(default_factory=list)
    positions: list[PositionRow] = field(default_factory=list)
    feed_events: list[FeedEventRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bbo) + len(self.positions) + len(self.feed_events)


class StorageBackend(Protocol):
    """A database the flusher writes to; it never has two ``write_batch`` calls in flight.

    ``write_batch`` either commits the whole batch or raises having committed nothing;
    any exception means "not written" and the flusher retries the same rows later, so
    it must be safe to write a batch again after a failure.
    """

    @property
    def name(self) -> str:
        """Short backend name for logs and metrics labels (``sqlite``, ``postgres``)."""
        ...

    async def open(self) -> None:
        """Connect, and create or migrate the schema to the newest version."""
        ...

    async def write_batch(self, batch: Batch) -> None:
        """Write every row of ``batch`` in one transaction."""
        ...

    async def load_open_positions(self) -> list[PositionRow]:
        """Every position not closed yet, oldest first (reloaded on start)."""
        ...

    async def find_position(self, account: str, position_id: str) -> PositionRow | None:
        """The stored position ``position_id`` of ``account``, open or closed, if any.

        May run while a ``write_batch`` is in flight; it sees committed rows only.
        """
        ...

    async def close(self) -> None:
        """Finish the work already submitted and release the connection."""
        ...
