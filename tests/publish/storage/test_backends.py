"""Every storage backend behind the one interface, against the real databases: SQLite in a
temporary file and the machine's PostgreSQL in a fresh schema per test."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from book.fixed import from_decimal, parse_fixed
from publish.storage import (
    BackendClosedError,
    Batch,
    BboRow,
    FeedEventKind,
    FeedEventRow,
    PositionRow,
    PositionSide,
    StorageBackend,
    StorageError,
    StorageFlusher,
)
from publish.storage.backend import written
from tests.postgres import pg_query
from tests.publish.storage.support import (
    RecordingBackend,
    Store,
    add_position,
    bbo,
    feed_event,
    position,
    running,
)

pytestmark = pytest.mark.timeout(30)

LARGE = "123456789012345678901234567890.123456789012"


def _parse(value: Any) -> int | None:
    """A stored price or quantity (SQLite: decimal text, PostgreSQL: ``Decimal``) -> fixed."""
    if value is None:
        return None
    return from_decimal(value) if isinstance(value, Decimal) else parse_fixed(value)


async def stored_bbo(store: Store) -> list[BboRow]:
    return [
        BboRow(ts_event, ts_recv, venue, symbol, seq, *map(_parse, prices))
        for ts_event, ts_recv, venue, symbol, seq, *prices in await store.read(
            "SELECT ts_event, ts_recv, venue, symbol, seq, bid_px, bid_qty, ask_px, ask_qty"
            " FROM {s}.bbo ORDER BY seq"
        )
    ]


async def stored_positions(store: Store) -> list[PositionRow]:
    return [
        PositionRow(
            id_, account, instrument, PositionSide(side), qty, entry_px, opened_ts, closed_ts
        )
        for id_, account, instrument, side, qty, entry_px, opened_ts, closed_ts in (
            (*row[:4], _parse(row[4]), _parse(row[5]), *row[6:])
            for row in await store.read(
                "SELECT id, account, instrument, side, qty, entry_px, opened_ts, closed_ts"
                " FROM {s}.positions ORDER BY opened_ts, account, id"
            )
        )
    ]


async def test_the_schema_is_the_same_logical_schema(store: Store, backend: StorageBackend) -> None:
    if store.kind == "sqlite":
        columns = {
            table: [name for _, name, *_ in await store.read(f"PRAGMA table_info({table})")]
            for table in ("bbo", "positions", "feed_events", "archived_positions", "schema_version")
        }
    else:
        columns = {}
        for table, name in await pg_query(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
            store.schema,
        ):
            columns.setdefault(table, []).append(name)
    assert columns == {
        "bbo": [
            "ts_event",
            "ts_recv",
            "venue",
            "symbol",
            "seq",
            "bid_px",
            "bid_qty",
            "ask_px",
            "ask_qty",
        ],
        "positions": [
            "id",
            "account",
            "instrument",
            "side",
            "qty",
            "entry_px",
            "opened_ts",
            "closed_ts",
        ],
        "feed_events": ["ts", "venue", "instrument", "kind", "detail"],
        "archived_positions": ["account", "id"],
        "schema_version": ["version"],
    }
    assert await store.read("SELECT version FROM {s}.schema_version ORDER BY version") == [
        (1,),
        (2,),
    ]
    assert backend.name == store.kind


async def test_prices_and_quantities_round_trip_exactly(
    store: Store, backend: StorageBackend
) -> None:
    rows = [
        BboRow(
            ts_event=1_700_000_000_000_000_001,
            ts_recv=1_700_000_000_000_000_002,
            venue="binance",
            symbol="BTC-USDT",
            seq=1,
            bid_px=parse_fixed("61737.63"),
            bid_qty=parse_fixed("0.00000001"),
            ask_px=parse_fixed(LARGE),
            ask_qty=parse_fixed("0.000000000001"),
        ),
        # An empty side, a negative price, and text that must be escaped in COPY.
        BboRow(0, 3, "kraken\t\\x", "ETH-USD\n", 2, None, None, parse_fixed("-0.5"), 10**12),
    ]
    short = PositionRow(
        id="p\t2",
        account="acct-1",
        instrument="okx:ETH-USDT",
        side=PositionSide.SELL,
        qty=parse_fixed("0.000000000001"),
        entry_price=parse_fixed(LARGE),
        opened_ts=2**63 - 1,
    )
    await written(backend, Batch(bbo=rows, positions=[position(), short]))

    assert await stored_bbo(store) == rows
    assert await stored_positions(store) == [position(), short]
    assert await backend.load_open_positions() == [position(), short]
    # Stored as given: the very same row as a new position again is settled as written.
    assert await written(backend, Batch(new_positions=[short])) == frozenset()
    if store.kind == "postgres":
        # NUMERIC, exact: the database itself compares the values.
        assert await store.read(
            "SELECT bid_px = 61737.63, bid_qty = 0.00000001, ask_px::text FROM {s}.bbo"
            " WHERE seq = 1"
        ) == [(True, True, LARGE)]
    else:
        # Exact decimal text, never a REAL.
        assert await store.read(
            "SELECT bid_px, bid_qty, ask_px, ask_qty, typeof(bid_px), typeof(ask_px)"
            " FROM {s}.bbo ORDER BY seq"
        ) == [
            ("61737.63", "0.00000001", LARGE, "0.000000000001", "text", "text"),
            (None, None, "-0.5", "1", "null", "text"),
        ]


async def test_positions_upsert_and_reload_only_open_ones(
    store: Store, backend: StorageBackend
) -> None:
    await written(
        backend,
        Batch(positions=[position("p-1", "acct-1"), position("p-1", "acct-2"), position("p-2")]),
    )
    await written(backend, Batch(positions=[position("p-1", "acct-1", closed_ts=99)]))
    assert await backend.load_open_positions() == [
        position("p-2", "acct-1"),
        position("p-1", "acct-2"),
    ]

    # Reopening the database (a restart) sees the same.
    await backend.close()
    again = store.make()
    await again.open()
    try:
        assert await again.load_open_positions() == [
            position("p-2", "acct-1"),
            position("p-1", "acct-2"),
        ]
    finally:
        await again.close()
    assert await store.read("SELECT version FROM {s}.schema_version ORDER BY version") == [
        (1,),
        (2,),
    ]


async def test_a_position_opened_and_closed_in_one_batch_ends_closed(
    store: Store, backend: StorageBackend
) -> None:
    await written(
        backend, Batch(positions=[position("p-1"), position("p-1", closed_ts=5), position("p-2")])
    )
    assert await backend.load_open_positions() == [position("p-2")]
    assert await stored_positions(store) == [position("p-1", closed_ts=5), position("p-2")]


async def test_feed_events_are_stored(store: Store, backend: StorageBackend) -> None:
    connect = FeedEventRow(
        ts=10, venue="okx", instrument=None, kind=FeedEventKind.CONNECT, detail="wss://ws.okx"
    )
    await written(backend, Batch(feed_events=[connect, feed_event(11)]))
    assert await store.read("SELECT * FROM {s}.feed_events ORDER BY ts") == [
        (10, "okx", None, "connect", "wss://ws.okx"),
        (11, "binance", "binance:BTC-USDT", "gap", "U 12 != 11"),
    ]


async def test_a_batch_is_one_transaction(store: Store, backend: StorageBackend) -> None:
    # The feed event goes in after the BBO rows and the positions, and cannot be stored
    # (64-bit integer columns): nothing of the batch may remain, and the next works.
    bad = Batch(
        bbo=[bbo(1)],
        positions=[position()],
        feed_events=[feed_event(2**63)],
        new_positions=[position("p-2")],
    )
    with pytest.raises(OverflowError):
        await written(backend, bad)
    assert await stored_bbo(store) == []
    assert await backend.load_open_positions() == []
    assert await store.read("SELECT count(*) FROM {s}.positions") == [(0,)]

    await written(backend, Batch(bbo=[bbo(2)]))
    assert await stored_bbo(store) == [bbo(2)]


async def test_rows_of_one_window_are_one_batch_and_acks_follow_the_commit(
    store: Store, backend: StorageBackend
) -> None:
    recording = RecordingBackend(backend)
    flusher = StorageFlusher(recording, window_ms=5)
    burst = [bbo(seq) for seq in range(1, 1_001)]
    async with running(flusher):
        for row in burst[:500]:
            flusher.add_bbo(row)
        ack = add_position(flusher, position())
        for row in burst[500:]:
            flusher.add_bbo(row)
        await ack
        # Acknowledged: committed, so another connection sees it.
        assert await stored_positions(store) == [position()]
        await asyncio.sleep(0)
        flusher.add_feed_event(feed_event(7))
        await recording.wait_for(lambda: len(recording.committed) == 2)

    assert recording.committed == [
        Batch(bbo=burst, positions=[position()]),
        Batch(feed_events=[feed_event(7)]),
    ]
    assert await stored_bbo(store) == burst


async def test_use_outside_open_and_close_is_an_error(store: Store) -> None:
    backend = store.make()
    with pytest.raises(BackendClosedError):
        await written(backend, Batch(bbo=[bbo(1)]))
    await backend.open()
    with pytest.raises(StorageError, match="already open"):
        await backend.open()
    await backend.close()
    await backend.close()
    with pytest.raises(BackendClosedError):
        await backend.load_open_positions()
