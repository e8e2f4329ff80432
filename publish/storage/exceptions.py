"""Errors raised by the storage package.

StorageError
├── BackendClosedError  a backend was used before ``open()`` or after ``close()``
└── SchemaVersionError  the database was written by a newer schema than this code knows

Write failures of the database itself (locked, disk full, connection lost) are not
wrapped: the flusher retries any exception from ``write_batch``, counts it and keeps the
rows, so the backend's own error reaches the log with its full detail.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by ``publish.storage``."""


class BackendClosedError(StorageError):
    """The backend is not open (``open()`` not awaited yet, or ``close()`` already was)."""


class SchemaVersionError(StorageError):
    """The database schema is newer than the newest migration this code ships."""
