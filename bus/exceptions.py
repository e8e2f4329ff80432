"""Errors raised by the bus package.

BusError
├── DecodeError          a bus payload is not a valid message of this encoding version
├── SubjectError         a prefix or subject token NATS cannot carry
├── NatsServerError      no nats-server binary, or it did not start
└── CredentialsError     a [bus] credential (a .creds file, a TLS file) cannot be used
"""

from __future__ import annotations


class BusError(Exception):
    """Base class of every error raised by ``bus``."""


class DecodeError(BusError, ValueError):
    """A payload is truncated, of another version or kind, or holds impossible values."""


class SubjectError(BusError, ValueError):
    """A subject prefix is empty or holds characters NATS reserves (``.*>`` or spaces)."""


class NatsServerError(BusError):
    """The nats-server binary is missing, or the server it started did not come up."""


class CredentialsError(BusError):
    """A ``[bus]`` credential cannot be used: a ``.creds`` file that is unreadable or not
    one, a TLS file that does not load. The message names the key, never a secret."""
