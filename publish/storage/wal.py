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

A reader holding a snapshot stops checkpoints from going past it, so the WAL grows
meanwhile. Once readers allow it again, the WAL never stays large: when a ``PASSIVE``
checkpoint has copied every frame and the file is over ``journal_size_limit``, the
checkpoint thread runs ``TRUNCATE`` without waiting (busy timeout 0: it gives up at once
if a reader or the writer is in the way, and the next commit tries again), and SQLite
itself cuts the file back to ``journal_size_limit`` whenever it restarts the WAL.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor

JOURNAL_SIZE_LIMIT = 64 << 20
"""The WAL size (bytes) a checkpoint brings the file back under once readers allow."""
CHECKPOINT_INTERVAL = 0.1
"""Seconds after which a commit starts a checkpoint whatever it wrote: at low rates the WAL
holds at most about a tenth of a second of writes beyond what the last one copied."""
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
        self._started = -CHECKPOINT_INTERVAL
        self._rows = 0
        """Rows committed since the last checkpoint started."""
        # Only ever touched in the checkpoint thread.
        self._conn: sqlite3.Connection | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sqlite-checkpoint"
            )

    def configure_writer(self, conn: sqlite3.Connection) -> None:
        """Set the writer connection up for these checkpoints: WAL, the same
        ``synchronous`` and ``journal_size_limit``, SQLite's own auto-checkpoint off."""
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
        """After a commit of ``rows`` rows: start a checkpoint unless one is running, or
        the last one started less than ``CHECKPOINT_INTERVAL`` ago with fewer than
        ``CHECKPOINT_ROWS`` rows committed since. O(1); from the writer's thread."""
        self._rows += rows
        if self.running is not None and not self.running.done():
            return
        now = time.monotonic()
        if self._rows < CHECKPOINT_ROWS and now - self._started < CHECKPOINT_INTERVAL:
            return
        if self._executor is not None:
            self._started = now
            self._rows = 0
            self.running = self._executor.submit(self.checkpoint_sync)

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
        if frames == copied and self.wal_bytes() > self._journal_size_limit:
            # Every frame is in the database file: if no reader still uses the WAL, empty
            # it. Busy (a reader, or the writer) returns at once; the next commit retries.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
