from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from book.fixed import parse_fixed
from publish.storage import (
    BackendClosedError,
    Batch,
    BboRow,
    FeedEventKind,
    FeedEventRow,
    PositionRow,
    PositionSide,
    SchemaVersionError,
    SqliteBackend,
    StorageError,
)
from tests.publish.storage.support import bbo, feed_event, position, query, stored_bbo

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "marketcast.db"


@pytest.fixture
async def backend(db_path: Path) -> AsyncIterator[SqliteBackend]:
    backend = SqliteBackend(db_path)
    await backend.open()
    yield backend
    await backend.close()


async def test_open_creates_the_schema_in_wal_mode(backend: SqliteBackend, db_path: Path) -> None:
    assert query(
        db_path,
        "SELECT type, name, tbl_name FROM sqlite_master"
        " WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
    ) == [
        ("table", "bbo", "bbo"),
        ("index", "bbo_venue_symbol_ts", "bbo"),
        ("table", "feed_events", "feed_events"),
        ("index", "feed_events_venue_ts", "feed_events"),
        ("table", "positions", "positions"),
        ("index", "positions_open", "positions"),
        ("table", "schema_version", "schema_version"),
    ]
    assert query(db_path, "SELECT version FROM schema_version") == [(1,)]
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert backend.name == "sqlite"


async def test_bbo_prices_and_quantities_are_stored_as_exact_text(
    backend: SqliteBackend, db_path: Path
) -> None:
    large = "123456789012345678901234567890.123456789012"
    rows = [
        BboRow(
            ts_event=1_700_000_000_000_000_001,
            ts_recv=1_700_000_000_000_000_002,
            venue="binance",
            symbol="BTC-USDT",
            seq=7,
            bid_px=parse_fixed("61737.63"),
            bid_qty=parse_fixed("0.00000001"),
            ask_px=parse_fixed(large),
            ask_qty=parse_fixed("0.000000000001"),
        ),
        BboRow(
            ts_event=0,
            ts_recv=3,
            venue="kraken",
            symbol="ETH-USD",
            seq=8,
            bid_px=None,
            bid_qty=None,
            ask_px=parse_fixed("2500"),
            ask_qty=parse_fixed("10.5"),
        ),
    ]
    await backend.write_batch(Batch(bbo=rows))

    assert query(
        db_path,
        "SELECT ts_event, ts_recv, venue, symbol, seq, bid_px, bid_qty, ask_px, ask_qty,"
        " typeof(bid_px), typeof(ask_px) FROM bbo ORDER BY rowid",
    ) == [
        (
            1_700_000_000_000_000_001,
            1_700_000_000_000_000_002,
            "binance",
            "BTC-USDT",
            7,
            "61737.63",
            "0.00000001",
            large,
            "0.000000000001",
            "text",
            "text",
        ),
        (0, 3, "kraken", "ETH-USD", 8, None, None, "2500", "10.5", "null", "text"),
    ]
    assert stored_bbo(db_path) == rows


async def test_positions_upsert_per_account_and_reload_only_open_ones(
    backend: SqliteBackend, db_path: Path
) -> None:
    short = PositionRow(
        id="p-2",
        account="acct-1",
        instrument="okx:ETH-USDT",
        side=PositionSide.SELL,
        qty=parse_fixed("0.00000001"),
        entry_px=parse_fixed("2500.000000000001"),
        opened_ts=1_700_000_000_000_000_100,
    )
    # The same client-chosen id in two accounts is two positions.
    await backend.write_batch(
        Batch(positions=[position("p-1", "acct-1"), position("p-1", "acct-2"), short])
    )
    assert await backend.load_open_positions() == [
        position("p-1", "acct-1"),
        position("p-1", "acct-2"),
        short,
    ]

    await backend.write_batch(Batch(positions=[position("p-1", "acct-1", closed_ts=99)]))

    assert await backend.load_open_positions() == [position("p-1", "acct-2"), short]
    assert query(db_path, "SELECT * FROM positions ORDER BY id, account") == [
        (
            "p-1",
            "acct-1",
            "binance:BTC-USDT",
            "buy",
            "0.5",
            "43000.1",
            1_700_000_000_000_000_000,
            99,
        ),
        (
            "p-1",
            "acct-2",
            "binance:BTC-USDT",
            "buy",
            "0.5",
            "43000.1",
            1_700_000_000_000_000_000,
            None,
        ),
        (
            "p-2",
            "acct-1",
            "okx:ETH-USDT",
            "sell",
            "0.00000001",
            "2500.000000000001",
            1_700_000_000_000_000_100,
            None,
        ),
    ]


async def test_position_opened_and_closed_in_one_batch_ends_closed(
    backend: SqliteBackend,
) -> None:
    await backend.write_batch(
        Batch(positions=[position("p-1"), position("p-1", closed_ts=5), position("p-2")])
    )
    assert await backend.load_open_positions() == [position("p-2")]


async def test_feed_events_are_stored(backend: SqliteBackend, db_path: Path) -> None:
    connect = FeedEventRow(
        ts=10, venue="okx", instrument=None, kind=FeedEventKind.CONNECT, detail="wss://ws.okx.com"
    )
    await backend.write_batch(Batch(feed_events=[connect, feed_event(11)]))
    assert query(db_path, "SELECT * FROM feed_events ORDER BY rowid") == [
        (10, "okx", None, "connect", "wss://ws.okx.com"),
        (11, "binance", "binance:BTC-USDT", "gap", "U 12 != 11"),
    ]


async def test_a_batch_is_one_transaction(backend: SqliteBackend, db_path: Path) -> None:
    # The feed event is inserted after the BBO rows and the position, and cannot be
    # bound (SQLite integers are 64-bit): nothing of the batch may remain.
    bad = Batch(bbo=[bbo(1)], positions=[position()], feed_events=[feed_event(2**63)])
    with pytest.raises(OverflowError):
        await backend.write_batch(bad)
    assert query(db_path, "SELECT count(*) FROM bbo") == [(0,)]
    assert await backend.load_open_positions() == []

    await backend.write_batch(Batch(bbo=[bbo(2)]))
    assert stored_bbo(db_path) == [bbo(2)]


async def test_reopening_keeps_rows_and_schema(db_path: Path) -> None:
    first = SqliteBackend(db_path)
    await first.open()
    await first.write_batch(Batch(bbo=[bbo(1)], positions=[position()]))
    await first.close()

    second = SqliteBackend(db_path)
    await second.open()
    try:
        assert await second.load_open_positions() == [position()]
    finally:
        await second.close()
    assert stored_bbo(db_path) == [bbo(1)]
    assert query(db_path, "SELECT version FROM schema_version") == [(1,)]


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO schema_version VALUES (2)")
    backend = SqliteBackend(db_path)
    with pytest.raises(SchemaVersionError, match="version 2 is newer than 1"):
        await backend.open()
    with pytest.raises(BackendClosedError):
        await backend.write_batch(Batch(bbo=[bbo(1)]))
    assert query(db_path, "SELECT name FROM sqlite_master WHERE name = 'bbo'") == []


async def test_use_outside_open_and_close_is_an_error(db_path: Path) -> None:
    backend = SqliteBackend(db_path)
    with pytest.raises(BackendClosedError):
        await backend.write_batch(Batch(bbo=[bbo(1)]))
    await backend.open()
    with pytest.raises(StorageError, match="already open"):
        await backend.open()
    await backend.close()
    await backend.close()
    with pytest.raises(BackendClosedError):
        await backend.load_open_positions()


async def test_the_wal_shrinks_once_a_long_reader_ends(db_path: Path) -> None:
    limit = 64 << 10
    backend = SqliteBackend(db_path, journal_size_limit=limit)
    await backend.open()
    try:
        await backend.write_batch(Batch(bbo=[bbo(0)]))
        with closing(sqlite3.connect(db_path, isolation_level=None)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM bbo").fetchone()  # holds its snapshot
            for start in range(1, 20_001, 500):
                await backend.write_batch(
                    Batch(bbo=[bbo(seq) for seq in range(start, start + 500)])
                )
            grown = backend.wal_bytes()
            assert grown > 1 << 20, "a reader's snapshot keeps the WAL from being reused"
            reader.execute("COMMIT")
        written = 20_001
        while written < 21_001 and backend.wal_bytes() > limit:
            await backend.write_batch(Batch(bbo=[bbo(written)]))
            written += 1
            await asyncio.sleep(0.005)  # lets the checkpoint thread catch up
        assert backend.wal_bytes() <= limit, f"the WAL stayed at {backend.wal_bytes()} bytes"
        assert query(db_path, "SELECT count(*) FROM bbo") == [(written,)]
    finally:
        await backend.close()


async def test_wal_bytes_is_the_wal_files_size(db_path: Path, backend: SqliteBackend) -> None:
    await backend.write_batch(Batch(bbo=[bbo(1)]))
    assert backend.wal_bytes() == (db_path.parent / (db_path.name + "-wal")).stat().st_size
    assert SqliteBackend(db_path.parent / "none.db").wal_bytes() == 0
