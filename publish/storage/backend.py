"""The interface every storage backend implements (``SqliteBackend``, ``PostgresBackend``).

A backend only knows how to write one ``Batch`` atomically and read positions back;
batching windows, retries, bounds and group-commit acks live in ``StorageFlusher``, so
each backend stays a thin adapter: SQLite runs ``executemany`` in its writer thread,
PostgreSQL will ``COPY`` the append-only tables and upsert positions, both inside one
transaction per batch.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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

    async def position_id_taken(self, account: str, position_id: str) -> bool:
        """Whether ``account`` has used ``position_id``: a stored position, open or closed,
        or one ``marketcast archive`` moved out (its id is kept, see ``delete_positions``).

        May run while a ``write_batch`` is in flight; it sees committed rows only.
        """
        ...

    async def close(self) -> None:
        """Finish the work already submitted and release the connection."""
        ...


@runtime_checkable
class BboHistoryReader(Protocol):
    """A backend that serves stored BBO changes back (``GET /v1/history/bbo/...``)."""

    def bbo_history(
        self, venue: str, symbol: str, *, start_ns: int, end_ns: int, limit: int | None
    ) -> AsyncGenerator[list[BboRow], None]:
        """The instrument's rows with ``start_ns <= ts_recv < end_ns``, oldest first (the
        order they were stored in for equal ``ts_recv``), at most ``limit``, in pages:
        never more than one page in memory, and no read holds the database for longer
        than one page. Runs beside the writes, never in front of them."""
        ...


@runtime_checkable
class PrunableBackend(Protocol):
    """A backend that deletes old market data in small steps (``[storage].retain_bbo_hours``)."""

    @property
    def prune_blocks_writes(self) -> bool:
        """Whether a ``prune`` holds up ``write_batch`` calls while it runs (SQLite: one
        writer thread) rather than running beside them (PostgreSQL: its own connection)."""
        ...

    async def prune(self, before_ns: int, max_rows: int) -> int:
        """Delete up to ``max_rows`` BBO rows and up to ``max_rows`` feed events received
        before ``before_ns``, oldest first, in one short transaction; the number deleted.
        Fewer than ``max_rows`` of either means nothing older is left to delete (for now).
        Positions are never pruned."""
        ...


@runtime_checkable
class ArchivableBackend(Protocol):
    """What ``marketcast archive`` reads and then deletes."""

    def bbo_before(self, before_ns: int) -> AsyncGenerator[list[BboRow], None]:
        """Every BBO row received before ``before_ns``, in pages, ordered by venue,
        symbol, ``ts_recv`` (and storage order within equal ``ts_recv``)."""
        ...

    async def delete_bbo(self, venue: str, symbol: str, first_ns: int, last_ns: int) -> int:
        """Delete the instrument's rows with ``first_ns <= ts_recv <= last_ns``."""
        ...

    def closed_positions_before(self, before_ns: int) -> AsyncGenerator[list[PositionRow], None]:
        """Every position closed before ``before_ns``, in pages, ordered by ``closed_ts``,
        account, id."""
        ...

    async def delete_positions(self, keys: Sequence[tuple[str, str]]) -> int:
        """Delete the closed positions ``(account, id)`` of ``keys``, keeping their ids
        (``archived_positions``, in the same transaction) so they are never used again."""
        ...
