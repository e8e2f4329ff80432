"""What every venue parser does with a raw frame before reading it (sans-I/O).

A frame is JSON text; one that is not JSON, or not the JSON shape the venue sends, or
a message whose fields are not what the venue documents, becomes a ``MalformedEvent``
carrying the frame's text: counted and logged by the runner, never raised.
``parse_object`` is the whole preamble for a venue whose frames are JSON objects;
``decode_frame``, ``decode_object`` and ``unexpected_message`` are its parts, for
parsers that do more between decoding and reading (Coinbase's connection sequence,
Kraken's v1 arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from feeds.events import FeedEvent, MalformedEvent

MESSAGE_ERRORS = (LookupError, TypeError, ValueError, AttributeError)
"""What reading a message whose fields are not as documented raises."""


def frame_text(frame: str | bytes) -> str:
    """The frame as text (bytes decoded as UTF-8, bad bytes replaced), for logs."""
    return frame if isinstance(frame, str) else frame.decode("utf-8", "replace")


def decode_frame(frame: str | bytes) -> Any | MalformedEvent:
    """The frame's JSON value, or a ``MalformedEvent`` if it is not JSON. O(len(frame))."""
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        return MalformedEvent(f"invalid JSON: {exc}", frame_text(frame))


def decode_object(frame: str | bytes) -> dict[str, Any] | MalformedEvent:
    """The frame's JSON object, or a ``MalformedEvent`` if it is not one."""
    message = decode_frame(frame)
    if isinstance(message, dict | MalformedEvent):
        return message
    return MalformedEvent("frame is not a JSON object", frame_text(frame))


def unexpected_message(venue: str, error: Exception, frame: str | bytes) -> MalformedEvent:
    """A message of ``venue`` that reading failed on with ``error``."""
    return MalformedEvent(f"unexpected {venue} message: {error!r}", frame_text(frame))


def parse_object(
    frame: str | bytes, venue: str, read: Callable[[dict[str, Any]], list[FeedEvent]]
) -> list[FeedEvent]:
    """Decode a frame that must be a JSON object and ``read`` it into events; any
    ``MESSAGE_ERRORS`` while reading make the frame one ``MalformedEvent``. O(len(frame))
    plus ``read``."""
    message = decode_object(frame)
    if isinstance(message, MalformedEvent):
        return [message]
    try:
        return read(message)
    except MESSAGE_ERRORS as exc:
        return [unexpected_message(venue, exc, frame)]
