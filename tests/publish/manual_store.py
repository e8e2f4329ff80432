"""A position book on a store the test commits by hand, shared by the book's tests and
the positions shard's."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from book.fixed import parse_fixed
from publish.catalog import RegistryCatalog
from publish.position import Position, PositionSide
from publish.positions import PositionBook
from publish.storage.flusher import Commit, InsertOutcome, StorageHealth, resolve_commits
from tests.publish.support import BTC, new_registry

NOW = 1_796_256_000 * 10**9
"""The book's clock starts here and counts one ns per reading."""


@dataclass
class ManualStore:
    """A ``PositionStore`` whose writes commit when the test says so."""

    health: StorageHealth = StorageHealth.HEALTHY
    inserts: list[tuple[Position, Commit[InsertOutcome]]] = field(default_factory=list)
    writes: list[tuple[Position, Commit[None]]] = field(default_factory=list)

    def insert(self, position: Position, commit: Commit[InsertOutcome]) -> None:
        self.inserts.append((position, commit))

    def write(self, position: Position, commit: Commit[None]) -> None:
        self.writes.append((position, commit))

    async def load_open(self) -> list[Position]:
        return []

    def commit(
        self,
        outcome: InsertOutcome = InsertOutcome.WRITTEN,
        *,
        taken: frozenset[str] = frozenset(),
    ) -> None:
        """Commit every write queued so far (new positions with ``outcome``, those whose id
        is in ``taken`` with ``ID_TAKEN``), resolved at once as the flusher resolves a
        batch's commits (``resolve_commits``): the new positions' in order, then the
        changed ones'."""
        inserts, self.inserts = self.inserts, []
        writes, self.writes = self.writes, []
        resolve_commits(
            [commit for _, commit in inserts],
            [
                InsertOutcome.ID_TAKEN if position.id in taken else outcome
                for position, _ in inserts
            ],
        )
        resolve_commits([commit for _, commit in writes], [None] * len(writes))


def new_book(store: ManualStore, **settings: float) -> PositionBook:
    return PositionBook(
        RegistryCatalog(new_registry()),
        store,
        clock=itertools.count(NOW).__next__,
        **settings,  # type: ignore[arg-type]
    )


def expected(position_id: str, opened_ts: int, closed_ts: int | None = None) -> Position:
    return Position(
        id=position_id,
        account="acct-1",
        instrument=BTC,
        side=PositionSide.BUY,
        qty=parse_fixed("0.5"),
        entry_price=parse_fixed("43000.1"),
        opened_ts=opened_ts,
        closed_ts=closed_ts,
    )
