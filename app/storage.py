"""Storage as every node that keeps some builds and shows it: the configured backend,
its /metrics gauges and its /health entry (the single process, an ingest, a positions
shard)."""

from __future__ import annotations

from app.settings import StorageSettings
from publish.metrics.prometheus import ExtraGauge
from publish.storage import SqliteBackend, StorageBackend, StorageFlusher, StorageHealth


def storage_backend(storage: StorageSettings) -> StorageBackend:
    """The configured backend, not opened yet. asyncpg is imported only for PostgreSQL
    (it is the ``postgres`` extra)."""
    if storage.backend == "postgres":
        from publish.storage.postgres import PostgresBackend

        return PostgresBackend(storage.dsn, schema=storage.schema, timeout_ms=storage.timeout_ms)
    return SqliteBackend(storage.path)


def storage_gauges(backend: StorageBackend) -> list[ExtraGauge]:
    """The storage gauges of /metrics: SQLite's WAL size, and the checkpoints its writer
    ran itself so that a large WAL starts over (``publish.storage.wal``)."""
    if isinstance(backend, SqliteBackend):
        checkpointer = backend.checkpointer
        return [
            ExtraGauge("db_wal_bytes", "Size of SQLite's WAL file (bytes)", backend.wal_bytes),
            ExtraGauge(
                "db_writer_checkpoints",
                "Checkpoints SQLite's writer ran itself so that a large WAL starts over",
                lambda: checkpointer.writer_checkpoints,
            ),
        ]
    return []


def storage_health(
    backend: StorageBackend, flusher: StorageFlusher
) -> tuple[bool, dict[str, object]]:
    """The /health entry of storage: degraded from a failed write until one succeeds."""
    stats = flusher.stats()
    return stats.health is StorageHealth.HEALTHY, {
        "backend": backend.name,
        "health": stats.health.value,
        "pending_rows": stats.pending_rows,
        "failures": stats.failures,
        "dropped_bbo_rows": stats.dropped_bbo_rows,
    }
