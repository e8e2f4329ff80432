"""Errors raised by the publish package (subscription server and fan-out).

PublishError
├── RequestError          a client request that cannot be served; becomes an ``error`` frame
├── TokenError            an auth token that is malformed, forged or expired
├── SecretFileError       the token secret file is missing (where it must exist) or shared
├── ServerNotRunningError the server's address was asked for before ``start()`` / after ``stop()``
└── ServerStartError      the server cannot start as configured (e.g. no descriptors left)

Nothing a client sends is allowed to raise past its own session: every ``RequestError``
is turned into an ``error`` frame with a stable ``code`` and the connection stays open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from publish.protocol import ErrorCode, RequestId


class PublishError(Exception):
    """Base class of every error raised by ``publish`` (outside ``publish.storage``)."""


class RequestError(PublishError):
    """A request that is malformed, unknown or not allowed.

    ``code`` is the stable machine-readable code sent to the client, ``request_id`` the
    request's ``id`` when it could be read (echoed in the error frame), else ``None``.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class TokenError(PublishError):
    """An auth token that cannot be accepted; ``code`` is ``token_invalid`` or
    ``token_expired`` (the session turns it into an ``error`` frame)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SecretFileError(PublishError):
    """The token secret file cannot be used: missing where it must not be created, or
    readable by group or others."""


class ServerNotRunningError(PublishError, RuntimeError):
    """The server has no listening socket (not started yet, or already stopped)."""


class ServerStartError(PublishError):
    """The server cannot start as configured; the message says what to change."""
