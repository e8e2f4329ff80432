"""Errors raised by the book package.

BookError
├── PrecisionError   a decimal string has more digits than the fixed-point scale holds
└── CrossedBookError a book's best bid is at or above its best ask
"""

from __future__ import annotations


class BookError(Exception):
    """Base class of every error raised by ``book``."""


class PrecisionError(BookError, ValueError):
    """A price or quantity cannot be represented exactly at ``SCALE_DIGITS``."""


class CrossedBookError(BookError):
    """The best bid is at or above the best ask after a whole message was applied."""
