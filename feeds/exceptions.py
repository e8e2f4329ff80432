"""Errors raised inside feed runners (all handled at the runner's task boundary).

FeedError
├── SilentConnectionError  nothing arrived within the venue's silence timeout
├── VenueClosingError      the venue announced it will close the connection
├── HandshakeError         the venue refused or never answered the handshake (login)
├── SnapshotError          a REST snapshot could not be fetched or parsed
└── MetadataError          instrument metadata could not be fetched or parsed
"""

from __future__ import annotations


class FeedError(Exception):
    """Base class of the feed package's errors."""


class SilentConnectionError(FeedError):
    """No frame arrived for longer than the venue's silence timeout."""


class VenueClosingError(FeedError):
    """The venue said it is about to close the connection (e.g. Binance serverShutdown)."""


class HandshakeError(FeedError):
    """The venue refused the connection's handshake (a login), or did not answer it in
    time. ``code`` is the venue's error code (empty for a timeout)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class SnapshotError(FeedError):
    """A REST snapshot request failed."""


class MetadataError(FeedError):
    """A venue's instrument metadata could not be fetched or was not understood."""
