"""Checkpoints of an SQLite database's WAL, off the writer's thread.

The writer connection has WAL auto-checkpoint off (``configure_writer``) and calls
``WalCheckpointer.request(rows)`` after each commit: unless a checkpoint is running,
that hands one (``PASSIVE``: it never waits for the writer) to a thread with a
connection of its own once ``CHECKPOINT_ROWS`` rows have been committed since the last
one, or ``CHECKPOINT_INTERVAL`` has passed. Copying the WAL back into the database file
and its fsync then overlap the next writes instead of stretching the commit that crossed
the auto-checkpoint threshold (the rare 20-700 ms writes of SQLite's own policy; on the
2-core VM of the benchmarks a 5-9 ms commit every few hundred).

Both bounds are measured. A checkpoint after every commit costs CPU at low rates: in
the order-entry server at 1,000 opens/s 20% of a core against 15% with one per 0.1 s.
One per 0.1 s alone lets a checkpoint grow with the rate, and a big one blocks the
writer: at 10,000 position rows/s and more, a ``BEGIN IMMEDIATE`` about once a second
found the database busy for 20-57 ms, the checkpoint's whole length (the bare group
commit of order entry then held 10,000 rows/s within a 10 ms p99; with a checkpoint
after every commit, 60,000). A few hundred rows per checkpoint already stalled it now
and then; ``CHECKPOINT_ROWS`` keeps each one small.

A checkpoint running beside the writer never finds the WAL wholly copied when the next
write begins: at thousands of rows a second every commit adds frames while it copies.
SQLite only starts the WAL over from its beginning when a write begins on a wholly
copied WAL, so the file would grow until ``TRUNCATE`` (below) cut it back, and a
``TRUNCATE`` blocks the writer: on the 2-core VM of the benchmarks, at 10,000 position
rows/s, the WAL reached 64 MB every 9 s and each ``TRUNCATE`` held the writer 75-85 ms.
So once the last checkpoint found more than ``restart_bytes`` of frames in the WAL (a
quarter of ``journal_size_limit``, at least ``RESTART_AT_LEAST``), the writer copies
what is left itself right after its next commit, unless a checkpoint is running (a
``PASSIVE`` checkpoint on its own connection: the frames of the last commits), and its
next write starts the WAL over. That one commit's caller waits for it (a few ms, once
per ``restart_bytes`` of writes); the file keeps its size and is reused.

A reader holding a snapshot stops checkpoints from going past it, so the WAL grows
meanwhile. Once readers allow it again, the WAL never stays large: when a ``PASSIVE``
checkpoint has copied every frame and the file is over ``journal_size_limit``, the
checkpoint thread runs ``TRUNCATE`` without waiting (busy timeout 0: it gives up at once
if a reader or the writer is in the way, and the next commit tries again), and SQLite
itself cuts the file back to ``journal_size_limit`` whenever it restarts the WAL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)

JOURNAL_SIZE_LIMIT = 64 << 20
"""The WAL size (bytes) a checkpoint brings the file back under once readers allow."""
CHECKPOINT_INTERVAL = 0.1
"""Seconds after which a commit starts a checkpoint whatever it wrote: at low rates the WAL
holds at most about a tenth of a second of writes beyond what the last one copied."""
RESTART_AT_LEAST = 1 << 20
"""The least ``restart_bytes`` (with a tiny ``journal_size_limit``): below it, copying in
the writer would cost a commit more often than it saves one."""
CHECKPOINT_ROWS = 100
"""Rows committed since the last checkpoint started after which the next commit starts
one (unless one is running) before ``CHECKPOINT_INTERVAL`` has passed."""


class WalCheckpointer:
    """Checkpoints of the database at ``path`` in a thread of their own (module
    docstring). ``synchronous`` is the writer's ``PRAGMA synchronous`` (a checkpoint
    fsyncs as it says)."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "NORMAL",
        journal_size_limit: int = JOURNAL_SIZE_LIMIT,
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._journal_size_limit = journal_size_limit
        self._executor: ThreadPoolExecutor | None = None
        self.running: Future[None] | None = None
        """The last checkpoint handed to the thread (done once it has ended)."""
        self.restart_bytes = max(journal_size_limit // 4, RESTART_AT_LEAST)
        """The WAL size past which the writer copies the last frames itself (module
        docstring)."""
        self.writer_checkpoints = 0
        """Checkpoints the writer ran itself, each letting the WAL start over."""
        self._wal_frames = 0
        """Frames in the WAL as the last checkpoint found them."""
        self._frame_bytes = 4096 + 24
        """A WAL frame: a page and its header (the page size is read from the writer)."""
        self._started = -CHECKPOINT_INTERVAL
        self._rows = 0
        """Rows committed since the last checkpoint started."""
        # Only ever touched in the writer's thread.
        self._writer: sqlite3.Connection | None = None
        # Only ever touched in the checkpoint thread.
        self._conn: sqlite3.Connection | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sqlite-checkpoint"
            )

    def configure_writer(self, conn: sqlite3.Connection) -> None:
        """Set the writer connection up for these checkpoints: WAL, the same
        ``synchronous`` and ``journal_size_limit``, SQLite's own auto-checkpoint off. The
        writer's ``request`` calls may then checkpoint on it (module docstring)."""
        self._writer = conn
        self._frame_bytes = conn.execute("PRAGMA page_size").fetchone()[0] + 24
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={self._journal_size_limit}")

    def wal_bytes(self) -> int:
        """The size of the WAL file now (0 when there is none). One ``stat``; any thread."""
        try:
            return os.stat(self._path + "-wal").st_size
        except OSError:
            return 0

    def request(self, rows: int) -> None:
        """After a commit of ``rows`` rows, outside any transaction, from the writer's
        thread: unless a checkpoint is running, copy the WAL's last frames here if the
        last checkpoint found it over ``restart_bytes``, or else start a checkpoint in the
        checkpoint thread unless the last one started less than ``CHECKPOINT_INTERVAL``
        ago with fewer than ``CHECKPOINT_ROWS`` rows committed since. Never raises."""
        self._rows += rows
        if self.running is not None and not self.running.done():
            return
        now = time.monotonic()
        if self._writer is not None and self._wal_frames * self._frame_bytes > self.restart_bytes:
            self._checkpoint_in_writer(now)
            return
        if self._rows < CHECKPOINT_ROWS and now - self._started < CHECKPOINT_INTERVAL:
            return
        if self._executor is not None:
            self._started = now
            self._rows = 0
            self.running = self._executor.submit(self.checkpoint_sync)

    def _checkpoint_in_writer(self, now: float) -> None:
        assert self._writer is not None
        try:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the commit stands; the next one tries again
            log.warning("checkpoint in the writer failed: %s", exc)
            return
        self.writer_checkpoints += 1
        self._wal_frames = 0  # the next write starts the WAL over (unless a reader holds it)
        self._started = now
        self._rows = 0

    async def close(self) -> None:
        """Close the connection once the checkpoint running (if any) has ended. Call it
        after the writer's last commit: a request after it starts nothing."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=False)

    # The checkpoint thread.

    def checkpoint_sync(self) -> None:
        """One checkpoint (``PASSIVE``, then ``TRUNCATE`` if it copied every frame and
        the file is over its limit)."""
        conn = self._conn
        if conn is None:
            # Busy timeout 0: TRUNCATE below never waits for a reader or the writer.
            conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA journal_size_limit={self._journal_size_limit}")
            self._conn = conn
        # Only fails on a busy database (another checkpoint): the next commit tries again.
        _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self._wal_frames = frames
        if frames == copied and self.wal_bytes() > self._journal_size_limit:
            # Every frame is in the database file: if no reader still uses the WAL, empty
            # it. Busy (a reader, or the writer) returns at once; the next commit retries.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
