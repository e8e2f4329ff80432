"""Batched storage: rows collected by ``StorageFlusher`` and written per 5 ms window
through a ``StorageBackend`` (``SqliteBackend``, ``PostgresBackend``)."""

from __future__ import annotations

from publish.position import PositionSide
from publish.storage.backend import Batch, StorageBackend
from publish.storage.exceptions import BackendClosedError, SchemaVersionError, StorageError
from publish.storage.flusher import FlusherStats, InsertOutcome, StorageFlusher, StorageHealth
from publish.storage.positions import FlushedPositionStore, PositionStore
from publish.storage.rows import (
    BboRow,
    FeedEventKind,
    FeedEventRow,
    PositionRow,
    bbo_row_from_snapshot,
)
from publish.storage.sqlite import SqliteBackend, SqliteSync

__all__ = [
    "BackendClosedError",
    "Batch",
    "BboRow",
    "FeedEventKind",
    "FeedEventRow",
    "FlushedPositionStore",
    "FlusherStats",
    "InsertOutcome",
    "PositionRow",
    "PositionSide",
    "PositionStore",
    "SchemaVersionError",
    "SqliteBackend",
    "SqliteSync",
    "StorageBackend",
    "StorageError",
    "StorageFlusher",
    "StorageHealth",
    "bbo_row_from_snapshot",
]
