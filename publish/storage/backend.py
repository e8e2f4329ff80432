"""The interface every storage backend implements (``SqliteBackend``, ``PostgresBackend``).

A backend only knows how to write one ``Batch`` atomically and read positions back;
batching windows, retries, bounds and group-commit acks live in ``StorageFlusher``, so
each backend stays a thin adapter: SQLite runs ``executemany`` in its writer thread,
PostgreSQL ``COPY``s the append-only tables, both inside one transaction per batch.

New positions are inserted only where their ``(account, id)`` is free, and the check is
part of that same transaction: one insert per batch that skips the taken ids (stored
positions, open or closed, and archived ids) and counts what went in. Only when something
was skipped does the backend read the stored rows of the batch's keys (one query),
and ``taken_new_positions`` (shared by both backends) decides: a stored row identical to
the new one is that very position, written by an earlier attempt of the same batch that
committed but was reported failed, so it counts as written; anything else holds the id.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from publish.storage.exceptions import StorageError
from publish.storage.rows import BboRow, FeedEventRow, PositionRow

PositionKey = tuple[str, str]
"""``(account, id)``: what identifies a stored position."""


@dataclass(frozen=True, slots=True)
class Batch:
    """The rows of one flush window, written in one transaction.

    ``new_positions`` (opens) are inserted where their ``(account, id)`` is free (see the
    module docstring), before ``positions`` (changes of stored positions: closes), which
    are upserts in order. ``bbo`` and ``feed_events`` are appended.
    """

    bbo: list[BboRow] = field(default_factory=list)
    positions: list[PositionRow] = field(default_factory=list)
    feed_events: list[FeedEventRow] = field(default_factory=list)
    new_positions: list[PositionRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bbo) + len(self.positions) + len(self.feed_events) + len(self.new_positions)


WriteOutcome = frozenset[int] | BaseException
"""How a ``write_batch`` ended: committed, with the indices into ``batch.new_positions``
of those not written because their id is taken; or the error (nothing committed)."""

WriteDone = Callable[[WriteOutcome], None]


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

    def write_batch(self, batch: Batch, done: WriteDone) -> None:
        """Start writing every row of ``batch`` in one transaction; ``done`` is called
        once, on the event loop, with how it ended (``WriteOutcome``).

        ``done`` runs as soon as the loop hears that the write ended: in the callback
        SQLite's writer thread schedules, in the step of PostgreSQL's task that got the
        commit's answer. Not behind a future that wakes a task: each of those waits a
        turn of the loop, behind the socket reads of that turn, and the flusher answers
        the batch's acks in ``done``. An error raised by the call itself means "not
        written", as one given to ``done`` does. ``written`` is the same write awaited.
        """
        ...

    async def load_open_positions(self) -> list[PositionRow]:
        """Every position not closed yet, oldest first (reloaded on start)."""
        ...

    async def close(self) -> None:
        """Finish the work already submitted and release the connection."""
        ...


async def written(backend: StorageBackend, batch: Batch) -> frozenset[int]:
    """``backend.write_batch(batch)`` awaited: the new positions' indices whose id is
    taken, or the write's error raised. Cancelling this stops the wait only: the write
    goes on. For maintenance, the bench and tests; the flusher takes ``done`` itself."""
    ended: asyncio.Future[frozenset[int]] = asyncio.get_running_loop().create_future()

    def settle(outcome: WriteOutcome) -> None:
        if ended.done():  # the wait was cancelled
            return
        if isinstance(outcome, BaseException):
            ended.set_exception(outcome)
        else:
            ended.set_result(outcome)

    backend.write_batch(batch, settle)
    return await ended


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


def unsettled_keys(
    new: Sequence[PositionRow], inserted: Collection[PositionKey]
) -> list[PositionKey]:
    """The keys of ``new`` whose rows the insert alone does not settle: not ``inserted``,
    or given more than once (then the stored row says which one went in). O(len(new)).

    ``inserted`` holds keys of ``new`` only (those the insert of ``new`` is known to have
    put in: every one it put in, or fewer), so as many as rows means every row went in
    under a key of its own: none to settle, found without a pass over the rows (a batch
    of opens with fresh ids, the usual one)."""
    if len(inserted) == len(new):
        return []
    counts = Counter((row.account, row.id) for row in new)
    return [key for key, count in counts.items() if count > 1 or key not in inserted]


def taken_new_positions(
    new: Sequence[PositionRow],
    inserted: Collection[PositionKey],
    stored: Mapping[PositionKey, PositionRow | None],
) -> frozenset[int]:
    """The indices of ``new`` not written because another position holds their id.

    ``stored``: the rows found under ``unsettled_keys`` after the insert (``None``: an
    archived id). A row identical to its stored one is written (it is that row), a row
    whose key went in and is not in ``stored`` too. A key neither inserted nor found
    cannot be decided and raises ``StorageError``, so the batch rolls back and is
    retried. O(len(new)), O(1) when every row went in (see ``unsettled_keys``)."""
    if not stored and len(inserted) == len(new):
        return frozenset()
    taken = []
    for index, row in enumerate(new):
        key = (row.account, row.id)
        if key not in stored:
            if key not in inserted:
                raise StorageError(f"position {key!r} was neither inserted nor found")
        elif stored[key] != row:
            taken.append(index)
    return frozenset(taken)
