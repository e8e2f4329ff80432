"""``marketcast archive`` as a process: killed (SIGKILL) in the middle, then run again,
every archived row is in exactly one Parquet file and none is left in the database."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from app.cli import main
from publish.storage import Batch, BboRow, SqliteBackend
from publish.storage.archive import DAY_NS
from publish.storage.backend import written
from tests.publish.storage.support import position, query
from tests.waiting import eventually, within

pytestmark = pytest.mark.timeout(120)

DAY0 = 1_793_664_000 * 10**9  # 2026-11-03T00:00:00Z
BEFORE = DAY0 + 3 * DAY_NS


def rows() -> list[BboRow]:
    return [
        BboRow(ts, ts, "binance", symbol, seq, 100 + seq, 1, 200 + seq, 2)
        for symbol in ("BTC-USDT", "ETH-USDT", "SOL-USDT")
        for seq in range(2_000)
        for ts in (DAY0 + seq * (4 * DAY_NS // 2_000),)  # four days: the last one stays
    ]


async def make_database(tmp_path: Path) -> Path:
    db = tmp_path / "m.db"
    backend = SqliteBackend(db)
    await backend.open()
    await written(
        backend, Batch(bbo=rows(), positions=[position("p-1", closed_ts=DAY0 + 5), position("p-2")])
    )
    await backend.close()
    config = tmp_path / "server.toml"
    config.write_text(f'[storage]\npath = "{db}"\n')
    return config


def command(config: Path, out: Path) -> list[str]:
    return [
        "archive",
        "--before",
        "2026-11-06T00:00:00Z",
        "--out",
        str(out),
        "--config",
        str(config),
        "--rows-per-file",
        "10",
    ]


async def test_a_killed_archive_run_again_loses_and_duplicates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = await make_database(tmp_path)
    out = tmp_path / "archive"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *command(config, out),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await eventually(
            lambda: len(list(out.rglob("*.parquet"))) >= 20, "the first files written", limit=60
        )
        process.send_signal(signal.SIGKILL)
    finally:
        await within(process.wait(), "the archive command's exit", limit=60)
    assert process.returncode == -signal.SIGKILL  # killed mid-way, not finished
    assert await asyncio.to_thread(main, command(config, out)) == 0
    report = capsys.readouterr().out
    assert "and 1 closed positions in 1 files" in report
    table = ds.dataset(out / "bbo", format="parquet", partitioning="hive").to_table()
    archived = Counter((r["symbol"], r["seq"]) for r in table.to_pylist())
    old = Counter((r.symbol, r.seq) for r in rows() if r.ts_recv < BEFORE)
    assert archived == old
    left = query(tmp_path / "m.db", "SELECT count(*), min(ts_recv) FROM bbo")
    assert left == [
        (len(rows()) - sum(old.values()), min(r.ts_recv for r in rows() if r.ts_recv >= BEFORE))
    ]
    assert query(tmp_path / "m.db", "SELECT id FROM positions") == [("p-2",)]


def test_archive_refuses_a_future_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["archive", "--before", "2999-01-01", "--out", str(tmp_path)]) == 2
    assert "in the future" in capsys.readouterr().err
