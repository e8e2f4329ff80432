"""Reading market data back, pruning it and what the archive reads and deletes, on both
backends (SQLite in a temporary file, the machine's PostgreSQL in a fresh schema)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from publish.storage import Batch, BboRow, StorageBackend
from publish.storage.backend import ArchivableBackend, BboHistoryReader, PrunableBackend, written
from tests.publish.storage.support import Store, bbo, feed_event, position

pytestmark = pytest.mark.timeout(30)

T0 = 1_700_000_000_000_500_000
"""``ts_recv`` of ``bbo(0)``; ``bbo(n)`` is received at ``T0 + n``."""


def eth(seq: int) -> BboRow:
    return replace(bbo(seq, bid="3000.01", ask="3000.02"), symbol="ETH-USDT")


async def history(
    backend: BboHistoryReader,
    symbol: str = "BTC-USDT",
    start: int = 0,
    end: int = 2**62,
    limit: int | None = None,
    page_rows: int = 3,
) -> list[list[BboRow]]:
    pages = backend.bbo_history(
        "binance", symbol, start_ns=start, end_ns=end, limit=limit, page_rows=page_rows
    )
    return [page async for page in pages]


def flat(pages: list[list[BboRow]]) -> list[BboRow]:
    return [row for page in pages for row in page]


async def test_history_reads_one_instruments_window_in_pages(backend: StorageBackend) -> None:
    btc = [bbo(seq) for seq in range(10)]
    # Two changes received in one frame: the same ts_recv, stored in seq order.
    twin = replace(bbo(10), ts_recv=btc[-1].ts_recv)
    await written(backend, Batch(bbo=[*btc[:5], eth(1), *btc[5:], twin, eth(2)]))
    reader: BboHistoryReader = backend
    everything = await history(reader)
    assert everything == [btc[0:3], btc[3:6], btc[6:9], [btc[9], twin]]
    assert flat(await history(reader, start=T0 + 2, end=T0 + 7)) == btc[2:7]
    assert flat(await history(reader, start=T0 + 2, limit=4)) == btc[2:6]
    assert flat(await history(reader, start=T0 + 2, limit=3)) == btc[2:5]
    assert flat(await history(reader, symbol="ETH-USDT", page_rows=1)) == [eth(1), eth(2)]
    assert await history(reader, start=T0 + 100) == []
    assert await history(reader, symbol="SOL-USDT") == []


async def test_prune_deletes_old_rows_in_bounded_steps_and_keeps_positions(
    backend: StorageBackend, store: Store
) -> None:
    old = [bbo(seq) for seq in range(7)]
    new = [bbo(seq) for seq in range(100, 103)]
    await written(
        backend,
        Batch(
            bbo=[*old, eth(1), *new],
            feed_events=[feed_event(T0 + n) for n in (1, 2, 3, 200)],
            positions=[position("p-1", closed_ts=T0 + 1), position("p-2")],
        ),
    )
    pruner: PrunableBackend = backend
    cutoff = T0 + 50
    steps = []
    while True:
        steps.append(await pruner.prune(cutoff, 3))
        if steps[-1] < 3:
            break
    assert sum(steps) >= 8 and all(step <= 3 for step in steps)
    left = await store.read("SELECT seq, symbol FROM {s}.bbo ORDER BY seq")
    assert left == [(100, "BTC-USDT"), (101, "BTC-USDT"), (102, "BTC-USDT")]
    assert await store.read("SELECT ts FROM {s}.feed_events") == [(T0 + 200,)]
    assert sorted(await store.read("SELECT id FROM {s}.positions")) == [("p-1",), ("p-2",)]
    assert await pruner.prune(cutoff, 3) == 0


async def test_what_the_archive_reads_and_deletes(backend: StorageBackend, store: Store) -> None:
    btc = [bbo(seq) for seq in range(6)]
    await written(
        backend,
        Batch(
            bbo=[btc[0], eth(1), *btc[1:], eth(2)],
            positions=[
                position("p-3", closed_ts=T0 + 3),
                position("p-1", closed_ts=T0 + 1),
                position("p-2", account="acct-0", closed_ts=T0 + 1),
                position("p-open"),
                position("p-late", closed_ts=T0 + 99),
            ],
        ),
    )
    archive: ArchivableBackend = backend
    pages = [page async for page in archive.bbo_before(T0 + 4, page_rows=2)]
    assert flat(pages) == [*btc[:4], eth(1), eth(2)]
    assert [len(page) for page in pages] == [2, 2, 2]
    closed = [
        row
        for page in [page async for page in archive.closed_positions_before(T0 + 50, page_rows=2)]
        for row in page
    ]
    assert [(row.account, row.id) for row in closed] == [
        ("acct-0", "p-2"),
        ("acct-1", "p-1"),
        ("acct-1", "p-3"),
    ]
    assert await archive.delete_bbo("binance", "BTC-USDT", T0 + 1, T0 + 3) == 3
    assert await archive.delete_positions([("acct-1", "p-1"), ("acct-1", "p-open")]) == 1
    assert await store.read("SELECT seq, symbol FROM {s}.bbo ORDER BY symbol, seq") == [
        (0, "BTC-USDT"),
        (4, "BTC-USDT"),
        (5, "BTC-USDT"),
        (1, "ETH-USDT"),
        (2, "ETH-USDT"),
    ]
    assert sorted(await store.read("SELECT id FROM {s}.positions")) == [
        ("p-2",),
        ("p-3",),
        ("p-late",),
        ("p-open",),
    ]


async def test_writes_go_on_while_a_history_read_is_in_the_middle(
    backend: StorageBackend,
) -> None:
    await written(backend, Batch(bbo=[bbo(seq) for seq in range(9)]))
    reader: BboHistoryReader = backend
    pages = reader.bbo_history(
        "binance",
        "BTC-USDT",
        start_ns=0,
        end_ns=2**62,
        limit=None,
        page_rows=2,
    )
    first = await anext(pages)
    await written(backend, Batch(bbo=[bbo(seq) for seq in range(9, 12)]))
    rest = [page async for page in pages]
    # PostgreSQL reads one snapshot; SQLite's pages see rows committed since: either way
    # every row stored before the read, in order, and nothing out of order after them.
    read = first + flat(rest)
    assert read == [bbo(seq) for seq in range(len(read))] and len(read) >= 9
