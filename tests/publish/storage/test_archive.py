"""The archive on both backends: old BBO rows and closed positions land in Parquet files
that pyarrow reads back exactly (Hive partitions by day and venue), and leave the
database; an archive that dies after any file loses nothing and, run again, duplicates
nothing."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from book.fixed import from_decimal
from publish.storage import Batch, BboRow, PositionRow, PositionSide, StorageBackend
from publish.storage.archive import DAY_NS, archive
from publish.storage.backend import written
from tests.publish.storage.support import Store, position

pytestmark = pytest.mark.timeout(60)

DAY0 = 1_796_256_000 * 10**9
"""2026-12-03T00:00:00Z."""
BEFORE = DAY0 + DAY_NS + 12 * 3_600 * 10**9
"""Noon of the second day: rows and positions before it are archived."""


def row(venue: str, symbol: str, ts_recv: int, seq: int) -> BboRow:
    empty_bid = seq % 7 == 0
    return BboRow(
        ts_event=ts_recv - 5,
        ts_recv=ts_recv,
        venue=venue,
        symbol=symbol,
        seq=seq,
        bid_px=None if empty_bid else 61_737_630_000_000_000 + seq,
        bid_qty=None if empty_bid else 1,  # 10^-12
        ask_px=123_456_789_012_345_678_901_234_567_890,  # 30 digits: the widest amount
        ask_qty=5 * 10**11,
    )


def market() -> list[BboRow]:
    """Two days of two instruments on binance and one on okx, some sharing a ts_recv."""
    rows = []
    for venue, symbol in (("binance", "BTC-USDT"), ("binance", "ETH-USDT"), ("okx", "BTC-USDT")):
        for n in range(30):
            ts = DAY0 + n * (DAY_NS // 20) + (n % 3 == 1)  # n % 3 == 2 repeats n - 1's ts
            rows.append(row(venue, symbol, ts - (n % 3 == 2), n))
    return rows


def closed(position_id: str, account: str, closed_ts: int, instrument: str) -> PositionRow:
    return replace(
        position(position_id, account, closed_ts=closed_ts),
        instrument=instrument,
        side=PositionSide.SELL,
        qty=25 * 10**10,
    )


def positions() -> list[PositionRow]:
    return [
        closed(f"p-{n}", f"acct-{n % 2}", DAY0 + n * 3_600 * 10**9, instrument)
        for n in range(40)
        for instrument in (("binance:BTC-USDT", "okx:ETH-USDT")[n % 2],)
    ] + [position("p-open", "acct-1")]


async def fill(backend: StorageBackend) -> None:
    await written(backend, Batch(bbo=market(), positions=positions()))


def archived_bbo(out: Path) -> list[BboRow]:
    table = ds.dataset(out / "bbo", format="parquet", partitioning="hive").to_table()
    return [
        BboRow(
            r["ts_event"],
            r["ts_recv"],
            r["venue"],
            r["symbol"],
            r["seq"],
            *(None if r[k] is None else from_decimal(r[k]) for k in AMOUNTS),
        )
        for r in table.to_pylist()
    ]


AMOUNTS = ("bid_px", "bid_qty", "ask_px", "ask_qty")


def archived_positions(out: Path) -> list[PositionRow]:
    table = ds.dataset(out / "positions", format="parquet", partitioning="hive").to_table()
    return [
        PositionRow(
            r["id"],
            r["account"],
            r["instrument"],
            PositionSide(r["side"]),
            from_decimal(r["qty"]),
            from_decimal(r["entry_px"]),
            r["opened_ts"],
            r["closed_ts"],
        )
        for r in table.to_pylist()
    ]


def key(row: BboRow) -> tuple[str, str, int, int]:
    return (row.venue, row.symbol, row.ts_recv, row.seq)


async def left_in(store: Store) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    bbo = await store.read("SELECT venue, symbol, seq FROM {s}.bbo ORDER BY venue, symbol, seq")
    ids = await store.read("SELECT id FROM {s}.positions ORDER BY id")
    return bbo, ids


def expected_left() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    bbo = sorted((r.venue, r.symbol, r.seq) for r in market() if r.ts_recv >= BEFORE)
    ids = sorted((p.id,) for p in positions() if p.closed_ts is None or p.closed_ts >= BEFORE)
    return bbo, ids


async def test_archive_writes_readable_partitions_then_deletes(
    backend: StorageBackend, store: Store, tmp_path: Path
) -> None:
    await fill(backend)
    out = tmp_path / "archive"
    report = await archive(backend, out, before_ns=BEFORE, rows_per_file=4)  # type: ignore[arg-type]
    old_bbo = sorted((r for r in market() if r.ts_recv < BEFORE), key=key)
    old_positions = [p for p in positions() if p.closed_ts is not None and p.closed_ts < BEFORE]
    assert sorted(archived_bbo(out), key=key) == old_bbo
    assert sorted(archived_positions(out), key=lambda p: p.id) == sorted(
        old_positions, key=lambda p: p.id
    )
    assert (report.bbo_rows, report.positions) == (len(old_bbo), len(old_positions))
    assert await left_in(store) == expected_left()
    days = {path.parent.parent.name for path in (out / "bbo").rglob("*.parquet")}
    assert days == {"date=2026-12-03", "date=2026-12-04"}
    venues = {path.parent.name for path in (out / "positions").rglob("*.parquet")}
    assert venues == {"venue=binance", "venue=okx"}
    for path in (out / "bbo").rglob("*.parquet"):  # one instrument and day per file
        rows = ds.dataset(path, format="parquet").to_table().to_pylist()
        assert len({r["symbol"] for r in rows}) == 1
        assert [r["ts_recv"] for r in rows] == sorted(r["ts_recv"] for r in rows)
    # Nothing older is left: a second run archives nothing and changes no file.
    files = {path: path.read_bytes() for path in out.rglob("*.parquet")}
    again = await archive(backend, out, before_ns=BEFORE, rows_per_file=4)  # type: ignore[arg-type]
    assert (again.bbo_rows, again.positions) == (0, 0)
    assert {path: path.read_bytes() for path in out.rglob("*.parquet")} == files


class Killed(Exception):
    pass


@pytest.mark.parametrize("dies_after", [1, 5, 13])
async def test_an_archive_that_dies_after_a_file_loses_and_duplicates_nothing(
    backend: StorageBackend, store: Store, tmp_path: Path, dies_after: int
) -> None:
    await fill(backend)
    out = tmp_path / "archive"
    written: list[Path] = []

    async def die(path: Path) -> None:
        written.append(path)
        if len(written) == dies_after:  # durable, its rows not deleted yet
            raise Killed(path)

    with pytest.raises(Killed):
        await archive(backend, out, before_ns=BEFORE, rows_per_file=4, on_file=die)  # type: ignore[arg-type]
    (written[-1].parent / f".{written[-1].name}.tmp").write_bytes(b"half a file")
    await archive(backend, out, before_ns=BEFORE, rows_per_file=4)  # type: ignore[arg-type]
    keys = [key(r) for r in archived_bbo(out)]
    assert Counter(keys) == Counter(key(r) for r in market() if r.ts_recv < BEFORE)
    ids = [p.id for p in archived_positions(out)]
    assert sorted(ids) == sorted(
        p.id for p in positions() if p.closed_ts is not None and p.closed_ts < BEFORE
    )
    assert await left_in(store) == expected_left()
    assert not list(out.rglob("*.tmp"))
