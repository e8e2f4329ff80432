"""The WAL of a busy writer starts over instead of growing until a ``TRUNCATE`` blocks
the writer: once a checkpoint finds more than ``restart_bytes`` in it, the writer copies
the last frames itself after its next commit, so its next write begins on a wholly
copied WAL (real SQLite files)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from publish.storage.wal import RESTART_AT_LEAST, WalCheckpointer


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, WalCheckpointer]]:
    path = str(tmp_path / "w.db")
    # No thread started: the test runs the checkpoint thread's checkpoints itself.
    checkpointer = WalCheckpointer(path, journal_size_limit=4 * RESTART_AT_LEAST)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        checkpointer.configure_writer(conn)
        conn.execute("CREATE TABLE rows (n INTEGER PRIMARY KEY, pad TEXT)")
        yield conn, checkpointer


def commit(conn: sqlite3.Connection, checkpointer: WalCheckpointer, rows: int) -> None:
    """One write of ``rows`` rows of about 1 KB, then the writer's ``request``."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO rows (pad) VALUES (?)", [("x" * 1000,)] * rows)
    conn.execute("COMMIT")
    checkpointer.request(rows)


def wal_frames(conn: sqlite3.Connection) -> int:
    """Frames in the WAL now (a checkpoint that copies nothing new reports them)."""
    frames: int = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    return frames


def test_the_writer_lets_a_large_wal_start_over(
    writer: tuple[sqlite3.Connection, WalCheckpointer],
) -> None:
    conn, checkpointer = writer
    assert checkpointer.restart_bytes == RESTART_AT_LEAST
    commit(conn, checkpointer, 2_000)  # about 2 MB of frames
    checkpointer.checkpoint_sync()  # the checkpoint thread's: it finds them all
    assert checkpointer.writer_checkpoints == 0
    commit(conn, checkpointer, 10)  # new frames meanwhile; the writer copies them itself
    assert checkpointer.writer_checkpoints == 1
    grown = checkpointer.wal_bytes()
    commit(conn, checkpointer, 10)  # begins on a wholly copied WAL: it starts over
    assert wal_frames(conn) < 20, "the WAL went on growing"
    assert checkpointer.wal_bytes() == grown, "the file is reused, not cut"
    assert conn.execute("SELECT count(*) FROM rows").fetchone() == (2_020,)


def test_a_small_wal_is_left_to_the_checkpoint_thread(
    writer: tuple[sqlite3.Connection, WalCheckpointer],
) -> None:
    conn, checkpointer = writer
    commit(conn, checkpointer, 200)
    checkpointer.checkpoint_sync()
    for _ in range(5):
        commit(conn, checkpointer, 10)
    assert checkpointer.writer_checkpoints == 0
