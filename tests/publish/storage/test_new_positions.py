"""A new position is written only where its account's id is free, decided inside the
batch's own transaction: on both backends, through the flusher and through the position
book (one process and a positions shard's store), with other writers of the same id,
lost commit answers and batches that fail halfway."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from book.fixed import format_fixed, parse_fixed
from publish.exceptions import RequestError
from publish.position import Position, PositionSide
from publish.protocol import ErrorCode
from publish.storage import (
    Batch,
    InsertOutcome,
    PositionRow,
    StorageBackend,
    StorageError,
    StorageFlusher,
)
from publish.storage.backend import taken_new_positions, unsettled_keys, written
from publish.storage.sqlite import _position_params
from tests.postgres import PG_DSN, pg_query
from tests.publish.storage.books import NOW, ORDER, book_on, refused_as_duplicate
from tests.publish.storage.support import (
    RecordingBackend,
    Store,
    add_new_position,
    position,
    running,
)
from tests.waiting import eventually_async

pytestmark = pytest.mark.timeout(60)

CLOSED_TS = 1_700_000_000_000_000_009


async def open_rows(backend: StorageBackend) -> list[tuple[str, str, int]]:
    return [(row.account, row.id, row.qty) for row in await backend.load_open_positions()]


async def test_a_new_position_goes_in_only_where_its_id_is_free(
    store: Store, backend: StorageBackend
) -> None:
    await written(
        backend,
        Batch(
            positions=[
                position("open"),
                position("closed", closed_ts=CLOSED_TS),
                position("archived", closed_ts=CLOSED_TS),
            ]
        ),
    )
    assert await backend.delete_positions([("acct-1", "archived")]) == 1  # type: ignore[attr-defined]
    new = [
        position("open"),  # that very position (an earlier attempt committed): written
        replace(position("open"), qty=7),  # another order under an open position's id
        position("closed"),  # a closed position keeps its id
        position("archived"),  # so does an archived one
        position("free"),
        replace(position("free"), qty=7),  # the same id earlier in this batch
        position("free"),  # the batch's own row again: written
        position("open", account="acct-2"),  # ids are per account
    ]
    assert await written(backend, Batch(new_positions=new)) == frozenset({1, 2, 3, 5})
    half = position().qty
    assert await open_rows(backend) == [
        ("acct-1", "free", half),
        ("acct-1", "open", half),
        ("acct-2", "open", half),
    ]
    assert await store.read("SELECT id, closed_ts FROM {s}.positions WHERE closed_ts > 0") == [
        ("closed", CLOSED_TS)
    ]


async def test_new_positions_beyond_one_statement_are_all_checked(backend: StorageBackend) -> None:
    await written(backend, Batch(positions=[position("p-150", closed_ts=CLOSED_TS)]))
    new = [position(f"p-{n}") for n in range(200)]
    new.append(replace(position("p-3"), qty=7))  # its id went in 200 rows earlier
    assert await written(backend, Batch(new_positions=new)) == frozenset({150, 200})
    assert len(await backend.load_open_positions()) == 199


async def test_a_new_position_keeps_its_closed_ts(backend: StorageBackend) -> None:
    # Opens are new positions with no closed_ts; one that has it is stored with it.
    new = [position("p-1"), position("p-2", closed_ts=CLOSED_TS)]
    assert await written(backend, Batch(new_positions=new)) == frozenset()
    assert await open_rows(backend) == [("acct-1", "p-1", position().qty)]


def test_a_key_neither_inserted_nor_found_fails_the_batch() -> None:
    # Rolled back and retried rather than acknowledged unwritten or refused unchecked.
    with pytest.raises(StorageError, match="neither inserted nor found"):
        taken_new_positions([position("p-1"), position("p-1")], set(), {})


def test_a_key_given_twice_is_unsettled_even_when_it_went_in() -> None:
    # As many keys inserted as distinct keys, fewer than rows: the stored row decides.
    new = [position("p-1"), position("p-2"), replace(position("p-1"), qty=7)]
    inserted = {("acct-1", "p-1"), ("acct-1", "p-2")}
    assert unsettled_keys(new, inserted) == [("acct-1", "p-1")]
    assert unsettled_keys(new[:2], inserted) == []
    stored = {("acct-1", "p-1"): new[0]}
    assert taken_new_positions(new, inserted, stored) == frozenset({2})
    assert taken_new_positions(new[:2], inserted, {}) == frozenset()


@asynccontextmanager
async def another_writer(store: Store, tmp_path: Path, row: PositionRow) -> AsyncIterator[None]:
    """Another session that has inserted ``row`` and not committed yet during the block;
    it commits at the end of the block."""
    if store.kind == "sqlite":
        with closing(sqlite3.connect(tmp_path / "marketcast.db", isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO positions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _position_params(row)
            )
            yield
            conn.execute("COMMIT")
        return
    conn = await asyncpg.connect(PG_DSN)
    try:
        async with conn.transaction():
            await conn.execute(
                f'INSERT INTO "{store.schema}".positions VALUES ($1, $2, $3, $4, $5::numeric,'
                " $6::numeric, $7, $8)",
                row.id,
                row.account,
                row.instrument,
                row.side.value,
                format_fixed(row.qty),
                format_fixed(row.entry_price),
                row.opened_ts,
                row.closed_ts,
            )
            yield
    finally:
        await conn.close()


async def waiting_on_a_lock(store: Store, backend: StorageBackend) -> None:
    """Until the backend's write waits for the other session's lock (PostgreSQL shows it;
    SQLite's busy wait is not visible, the write may then start after the commit)."""
    if store.kind == "sqlite":
        await asyncio.sleep(0.05)
        return

    async def waiting() -> bool:
        rows = await pg_query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
            " AND wait_event_type = 'Lock'",
            backend.application_name,  # type: ignore[attr-defined]
        )
        return rows == [(1,)]

    await eventually_async(waiting, "the write waits for the other session")


@pytest.mark.parametrize(("theirs", "taken"), [("other", {0}), ("same", set())])
async def test_another_session_inserting_the_same_id_at_once_decides_it(
    store: Store, backend: StorageBackend, tmp_path: Path, theirs: str, taken: set[int]
) -> None:
    ours = position("p-1")
    their_row = replace(ours, qty=7) if theirs == "other" else ours
    async with another_writer(store, tmp_path, their_row):
        write = asyncio.ensure_future(written(backend, Batch(new_positions=[ours])))
        await waiting_on_a_lock(store, backend)
        assert not write.done()
    assert await write == frozenset(taken)
    assert await open_rows(backend) == [("acct-1", "p-1", their_row.qty)]


async def test_the_flusher_says_written_or_taken_and_a_lost_commit_answer_is_settled_by_the_retry(
    store: Store, backend: StorageBackend
) -> None:
    await written(backend, Batch(positions=[position("p-0", closed_ts=CLOSED_TS)]))
    recording = RecordingBackend(backend, lose_first=1)
    flusher = StorageFlusher(recording, window_ms=1, retry_initial_ms=1, retry_max_ms=4)
    async with running(flusher):
        free = add_new_position(flusher, position("p-1"))
        taken = add_new_position(flusher, position("p-0"))
        assert await asyncio.gather(free, taken) == [
            InsertOutcome.WRITTEN,
            InsertOutcome.ID_TAKEN,
        ]
    # The first attempt committed and was reported failed; the retry found its row.
    batch = Batch(new_positions=[position("p-1"), position("p-0")])
    assert (recording.failed, recording.committed) == ([batch], [batch])
    assert await open_rows(backend) == [("acct-1", "p-1", position().qty)]
    assert flusher.stats().rows_written == 1


def opened(position_id: str, opened_ts: int) -> Position:
    """The position ``ORDER`` opens, as the book acknowledges it."""
    return Position(
        id=position_id,
        account="acct-1",
        instrument="binance:BTC-USDT",
        side=PositionSide.BUY,
        qty=parse_fixed("0.5"),
        entry_price=parse_fixed("43000.1"),
        opened_ts=opened_ts,
    )


@pytest.mark.parametrize("shards", [0, 2])
async def test_an_open_whose_id_the_commit_finds_taken_is_refused_and_its_id_released(
    store: Store, shards: int
) -> None:
    account = "acct-1"  # shard 0 of 2 as well (bus.positions.shard_of)
    async with book_on(store, shards=shards, max_positions_per_account=1) as (book, backend):
        # Written by another process after this one started: not in the book's memory.
        await written(
            backend, Batch(positions=[position("p-1", closed_ts=CLOSED_TS), position("p-2")])
        )
        await refused_as_duplicate(book, account, "p-1")
        await refused_as_duplicate(book, account, "p-2")  # the same order, another position
        assert len(book) == 0
        # Refused opens hold nothing: the one position the account may have is still free.
        assert await book.open(account, position_id="p-3", **ORDER) == opened("p-3", NOW + 2)
        assert book.positions(account) == [opened("p-3", NOW + 2)]


async def test_two_opens_of_one_id_at_once_give_one_position(store: Store) -> None:
    async with book_on(store) as (book, _):
        answers = await asyncio.gather(
            book.open("acct-1", position_id="p-1", **ORDER),
            book.open("acct-1", position_id="p-1", **(ORDER | {"qty": "0.6"})),
            book.open("acct-1", position_id="p-1", **ORDER),  # a retry: the same answer
            return_exceptions=True,
        )
    assert answers[0] == answers[2] == opened("p-1", NOW)
    assert isinstance(answers[1], RequestError)
    assert answers[1].code is ErrorCode.DUPLICATE_POSITION

    # Two processes on one database (not in one cluster: a misconfiguration).
    async with (
        book_on(store) as (one, backend),
        book_on(store, clock_start=NOW + 10) as (two, _),
    ):
        answers = await asyncio.gather(
            one.open("acct-1", position_id="p-9", **ORDER),
            two.open("acct-1", position_id="p-9", **(ORDER | {"qty": "0.6"})),
            return_exceptions=True,
        )
        stored = await backend.load_open_positions()
    won = [answer for answer in answers if isinstance(answer, Position)]
    lost = [answer for answer in answers if isinstance(answer, RequestError)]
    assert len(won) == len(lost) == 1
    assert lost[0].code is ErrorCode.DUPLICATE_POSITION
    assert [(row.id, row.qty, row.opened_ts) for row in stored if row.id == "p-9"] == [
        ("p-9", won[0].qty, won[0].opened_ts)
    ]


async def test_an_open_whose_commit_answer_was_lost_is_acked_once_the_retry_finds_it(
    store: Store,
) -> None:
    recording = RecordingBackend(store.make(), lose_first=1)
    async with book_on(store, backend=recording) as (book, backend):
        assert await book.open("acct-1", position_id="p-1", **ORDER) == opened("p-1", NOW)
        assert await open_rows(backend) == [("acct-1", "p-1", position().qty)]
    assert len(recording.failed) == len(recording.committed) == 1


async def test_a_batch_failing_halfway_writes_nothing_and_its_opens_get_storage_unavailable(
    store: Store,
) -> None:
    recording = RecordingBackend(store.make())
    recording.break_batches = True
    async with book_on(store, backend=recording, ack_timeout=0.3) as (book, backend):
        with pytest.raises(RequestError) as unconfirmed:
            await book.open("acct-1", position_id="p-1", **ORDER)
        assert unconfirmed.value.code is ErrorCode.STORAGE_UNAVAILABLE
        assert "did not confirm within 0.3s" in unconfirmed.value.message
        await recording.wait_for(lambda: len(recording.started) >= 2)  # a retry: degraded
        assert await store.read("SELECT count(*) FROM {s}.positions") == [(0,)]
        with pytest.raises(RequestError) as refused:
            await book.open("acct-1", position_id="p-2", **ORDER)
        assert (refused.value.code, refused.value.message) == (
            ErrorCode.STORAGE_UNAVAILABLE,
            "storage unavailable: the database is not accepting writes; nothing was changed",
        )
        recording.break_batches = False
        # The same open again: acknowledged once written, as first stamped.
        assert await book.open("acct-1", position_id="p-1", **ORDER) == opened("p-1", NOW)
        assert await open_rows(backend) == [("acct-1", "p-1", position().qty)]
    # Only p-1 was ever queued: the refused p-2 never was.
    p_1 = replace(position("p-1"), opened_ts=NOW)
    assert recording.failed == [Batch(new_positions=[p_1])] * len(recording.failed)
