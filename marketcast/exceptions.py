"""Errors raised by the marketcast client.

MarketcastError
├── ServerError          the server refused a request: ``code`` is the protocol's stable
│                        error code (``unknown_instrument``, ``duplicate_position``, ...)
├── ConnectionLostError  the connection dropped before the reply to a request that is
│                        not safe to resend (``close_position``): it may have been applied
├── ClientClosedError    the client was used after its ``async with`` block ended
└── ProtocolError        the server sent something this client cannot read

A first connection that cannot be made raises the ``OSError`` (or websockets'
``InvalidHandshake``) of the attempt itself; later connection losses are not errors: the
client reconnects by itself and yields ``Disconnected`` and ``Reconnected`` messages.
"""

from __future__ import annotations


class MarketcastError(Exception):
    """Base class of every error raised by ``marketcast``."""


class ServerError(MarketcastError):
    """The server answered a request with an ``error`` message.

    ``code`` is the protocol's error code (stable; docs/protocol.md lists them) and
    ``message`` the server's explanation, meant for people.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLostError(MarketcastError):
    """The connection dropped while a request that must not be resent blindly was waiting
    for its reply; whether the server applied it is unknown."""


class ClientClosedError(MarketcastError):
    """The client is closed (its ``async with`` block ended)."""


class ProtocolError(MarketcastError):
    """A frame from the server that is not a message of the marketcast protocol."""
