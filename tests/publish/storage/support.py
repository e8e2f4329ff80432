"""Shared helpers for the storage tests: sample rows, raw reads, a recording backend."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from book.fixed import parse_fixed
from publish.storage import (
    Batch,
    BboRow,
    FeedEventKind,
    FeedEventRow,
    PositionRow,
    PositionSide,
    StorageBackend,
    StorageFlusher,
)
from publish.storage.backend import WriteDone, written
from publish.storage.flusher import InsertOutcome


def bbo(seq: int, bid: str | None = "61737.63", ask: str | None = "61737.64") -> BboRow:
    return BboRow(
        ts_event=1_700_000_000_000_000_000 + seq,
        ts_recv=1_700_000_000_000_500_000 + seq,
        venue="binance",
        symbol="BTC-USDT",
        seq=seq,
        bid_px=None if bid is None else parse_fixed(bid),
        bid_qty=None if bid is None else parse_fixed("0.5"),
        ask_px=None if ask is None else parse_fixed(ask),
        ask_qty=None if ask is None else parse_fixed("1.25"),
    )


def position(
    id_: str = "p-1", account: str = "acct-1", closed_ts: int | None = None
) -> PositionRow:
    return PositionRow(
        id=id_,
        account=account,
        instrument="binance:BTC-USDT",
        side=PositionSide.BUY,
        qty=parse_fixed("0.5"),
        entry_price=parse_fixed("43000.1"),
        opened_ts=1_700_000_000_000_000_000,
        closed_ts=closed_ts,
    )


def feed_event(ts: int, kind: FeedEventKind = FeedEventKind.GAP) -> FeedEventRow:
    return FeedEventRow(
        ts=ts, venue="binance", instrument="binance:BTC-USDT", kind=kind, detail="U 12 != 11"
    )


def query(path: Path, sql: str) -> list[Any]:
    """Rows read through a connection of our own, as another process would see them."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def _fixed(text: str | None) -> int | None:
    return None if text is None else parse_fixed(text)


def stored_bbo(path: Path) -> list[BboRow]:
    """The bbo table, in insertion order, parsed back into rows."""
    return [
        BboRow(ts_event, ts_recv, venue, symbol, seq, *map(_fixed, prices))
        for ts_event, ts_recv, venue, symbol, seq, *prices in query(
            path, "SELECT * FROM bbo ORDER BY rowid"
        )
    ]


class RecordingBackend:
    """A real backend underneath that records every write attempt and its outcome.

    ``fail_first`` makes the first N writes raise before reaching the database (an
    outage); ``lose_first`` makes the first N writes that commit raise afterwards (the
    answer to the commit was lost); while ``break_batches`` is set every write carries
    one more feed event the database cannot store, so it fails halfway through the
    transaction. Clearing ``gate`` holds writes until the test sets it again.
    """

    def __init__(self, inner: StorageBackend, *, fail_first: int = 0, lose_first: int = 0) -> None:
        self.inner = inner
        self.fail_remaining = fail_first
        self.lose_remaining = lose_first
        self.break_batches = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.started: list[Batch] = []
        self.failed: list[Batch] = []
        self.committed: list[Batch] = []
        self._changed = asyncio.Condition()
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"recording-{self.inner.name}"

    async def open(self) -> None:
        await self.inner.open()

    def write_batch(self, batch: Batch, done: WriteDone) -> None:
        task = asyncio.get_running_loop().create_task(self._write(batch, done))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, batch: Batch, done: WriteDone) -> None:
        try:
            taken = await self._attempt(batch)
        except Exception as error:
            done(error)
        else:
            done(taken)

    async def _attempt(self, batch: Batch) -> frozenset[int]:
        self.started.append(batch)
        await self._notify()
        await self.gate.wait()
        try:
            if self.fail_remaining:
                self.fail_remaining -= 1
                raise ConnectionError("injected outage")
            if self.break_batches:  # after every other row: 2**63 fits no INTEGER/BIGINT
                unstorable = feed_event(2**63)
                await written(
                    self.inner, replace(batch, feed_events=[*batch.feed_events, unstorable])
                )
            taken = await written(self.inner, batch)
            if self.lose_remaining:
                self.lose_remaining -= 1
                raise ConnectionError("injected loss of the commit's answer")
        except Exception:
            self.failed.append(batch)
            await self._notify()
            raise
        self.committed.append(batch)
        await self._notify()
        return taken

    async def load_open_positions(self) -> list[PositionRow]:
        return await self.inner.load_open_positions()

    async def close(self) -> None:
        await self.inner.close()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


@asynccontextmanager
async def running(flusher: StorageFlusher) -> AsyncIterator[asyncio.Task[None]]:
    """``flusher.run()`` as a task for the block, cancelled at its end."""
    task = asyncio.create_task(flusher.run())
    try:
        yield task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


@dataclass(frozen=True, slots=True)
class Store:
    """How to open a backend on one database again, and read its tables back raw."""

    kind: str
    schema: str
    """The PostgreSQL schema; empty for SQLite."""
    make: Callable[[], StorageBackend]
    read: Callable[[str], Awaitable[list[tuple[Any, ...]]]]
    """``SELECT`` on the database through a connection of its own."""


def add_position(flusher: StorageFlusher, row: PositionRow) -> asyncio.Future[None]:
    """``flusher.add_position`` with a future as the row's commit."""
    commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    flusher.add_position(row, commit)
    return commit


def add_new_position(flusher: StorageFlusher, row: PositionRow) -> asyncio.Future[InsertOutcome]:
    """``flusher.add_new_position`` with a future as the row's commit."""
    commit: asyncio.Future[InsertOutcome] = asyncio.get_running_loop().create_future()
    flusher.add_new_position(row, commit)
    return commit
