"""How one connection wants its frames: timestamp format, batching and compression.

A connection chooses on its URL: ``?ts=ns|us|ms|iso`` (``TimeFormat``), ``?batch=1`` and
``?compress=1`` (permessage-deflate, negotiated in the handshake with
``server_no_context_takeover``). Messages are always encoded once in the canonical form
(integer ns timestamps); ``Framing`` turns a tick's messages into the bytes of a
``WireFormat``, and memoizes per publish tick the work that does not depend on the
connection: a message re-stamped for a time format, a message compressed for a deflate
window. So every message is encoded once per tick, converted once per tick per time
format in use, compressed once per tick per format, and the same frame bytes go to every
subscriber of the same format.

Compressed frames: with no context takeover every message is an independent raw deflate
stream (one compressor per window size, reset with ``Z_FULL_FLUSH`` after each message,
trailing ``00 00 ff ff`` removed as RFC 7692 7.2.1 says) in a text frame with RSV1 set.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Any
from urllib.parse import parse_qs

import orjson
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)

from publish.protocol import encode_batch, text_frame_header, text_frames


class TimeFormat(StrEnum):
    """How timestamps are written. ``ns``: integer nanoseconds since the epoch (exact in
    languages with 64-bit integers); ``us``/``ms``: integer micro/milliseconds, exact as
    JavaScript numbers (below 2^53); ``iso``: an RFC 3339 UTC string with all nine
    fraction digits (``"2023-11-14T22:13:20.123456789Z"``), exact everywhere."""

    NS = "ns"
    US = "us"
    MS = "ms"
    ISO = "iso"


TIMESTAMP_FIELDS = frozenset(
    {"ts", "ts_event", "ts_recv", "ts_send", "opened_ts", "closed_ts", "expires"}
)
"""The fields, at any depth of a message, that hold a timestamp (ns since the epoch)."""

_NS_PER_SECOND = 1_000_000_000


def format_timestamp(ns: int, fmt: TimeFormat) -> int | str:
    """``ns`` (since the epoch) as ``fmt`` writes it; us/ms are floored."""
    if fmt is TimeFormat.NS:
        return ns
    if fmt is TimeFormat.US:
        return ns // 1_000
    if fmt is TimeFormat.MS:
        return ns // 1_000_000
    seconds, fraction = divmod(ns, _NS_PER_SECOND)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def restamp(message: bytes, fmt: TimeFormat) -> bytes:
    """``message`` (canonical: ns timestamps) with every timestamp written as ``fmt``.
    One JSON decode and encode (~3 µs for a bbo); ``ns`` returns it unchanged."""
    if fmt is TimeFormat.NS:
        return message
    return orjson.dumps(_restamped(orjson.loads(message), fmt))


def _restamped(value: Any, fmt: TimeFormat) -> Any:
    if isinstance(value, dict):
        return {
            key: (
                format_timestamp(item, fmt)
                if key in TIMESTAMP_FIELDS and type(item) is int
                else _restamped(item, fmt)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_restamped(item, fmt) for item in value]
    return value


DEFLATE_WINDOW_BITS = 12
"""The largest LZ77 window the server offers (``server_max_window_bits``): 4 KB, as
websockets' own default; a client may ask for less."""


@dataclass(frozen=True, slots=True)
class WireFormat:
    """What one connection's frames look like. Get instances from ``wire_format`` (they
    are interned, so a tick caches frames by identity)."""

    ts: TimeFormat = TimeFormat.NS
    batch: bool = False
    deflate_bits: int | None = None
    """The negotiated server window bits of permessage-deflate (``None``: plain frames)."""

    @property
    def plain(self) -> bool:
        """Messages go out as encoded: ns timestamps, uncompressed."""
        return self.ts is TimeFormat.NS and self.deflate_bits is None


def wire_format(
    ts: TimeFormat = TimeFormat.NS, *, batch: bool = False, deflate_bits: int | None = None
) -> WireFormat:
    """The one ``WireFormat`` instance of these settings, however they are spelled (a
    default left out or given: ``functools.cache`` alone keys on the call's spelling, and
    a handshake's explicit settings then made a second "plain" that ``PLAIN`` was not)."""
    return _interned(ts, batch, deflate_bits)


@cache
def _interned(ts: TimeFormat, batch: bool, deflate_bits: int | None) -> WireFormat:
    return WireFormat(ts, batch, deflate_bits)


PLAIN = wire_format()
BATCHED = wire_format(batch=True)


class Framing:
    """Frames messages in any ``WireFormat``, each message converted at most once per time
    format and compressed at most once per window between two ``end_tick`` calls (the
    memos hold the messages, so identical bytes are never confused). One per fan-out."""

    def __init__(self) -> None:
        self._restamped: dict[TimeFormat, dict[bytes, bytes]] = {}
        self._compressed: dict[int, dict[bytes, bytes]] = {}
        self._compressors: dict[int, Any] = {}

    def frame(self, wire: WireFormat, message: bytes) -> bytes:
        """``frames`` of the one ``message``; on a plain unbatched wire, its header and
        itself, without the list ``text_frames`` builds. O(bytes)."""
        if wire is PLAIN:
            return text_frame_header(len(message)) + message
        return self.frames(wire, (message,))

    def frames(self, wire: WireFormat, messages: Iterable[bytes]) -> bytes:
        """The bytes of ``messages`` as ``wire``'s frames: one frame per message, or one
        batch frame. O(bytes); plain unbatched messages cost what ``text_frames`` does."""
        if wire.plain:
            if wire.batch:
                return text_frames((encode_batch(messages),))
            return text_frames(messages)
        if wire.ts is not TimeFormat.NS:
            messages = self._restamp_all(messages, wire.ts)
        if wire.batch:
            batch = encode_batch(messages)
            if wire.deflate_bits is None:
                return text_frames((batch,))
            return self._compressed_frame(batch, wire.deflate_bits)
        if wire.deflate_bits is None:
            return text_frames(messages)
        memo = self._compressed.setdefault(wire.deflate_bits, {})
        parts = []
        for message in messages:
            frame = memo.get(message)
            if frame is None:
                frame = memo[message] = self._compressed_frame(message, wire.deflate_bits)
            parts.append(frame)
        return b"".join(parts)

    def end_tick(self) -> None:
        """Forget this tick's conversions (the next tick has new messages). O(1)."""
        if self._restamped or self._compressed:
            self._restamped = {}
            self._compressed = {}

    def _restamp_all(self, messages: Iterable[bytes], ts: TimeFormat) -> list[bytes]:
        memo = self._restamped.setdefault(ts, {})
        converted = []
        for message in messages:
            stamped = memo.get(message)
            if stamped is None:
                stamped = memo[message] = restamp(message, ts)
            converted.append(stamped)
        return converted

    def _compressed_frame(self, message: bytes, bits: int) -> bytes:
        """One compressed text frame (RSV1 set) holding ``message``."""
        compressor = self._compressors.get(bits)
        if compressor is None:
            compressor = self._compressors[bits] = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, 5
            )
        # A full flush ends the message on a byte boundary with an empty history: the
        # next message shares nothing with it (no context takeover).
        data = compressor.compress(message) + compressor.flush(zlib.Z_FULL_FLUSH)
        payload = data[:-4]  # the 00 00 ff ff of the flush's empty stored block
        header = text_frame_header(len(payload))
        return bytes((header[0] | 0x40,)) + header[1:] + payload


# -- the handshake ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireRequest:
    """What a websocket URL asks for (``?ts=``, ``?batch=``, ``?compress=``); compression
    is granted only if the handshake then negotiates it."""

    ts: TimeFormat = TimeFormat.NS
    batch: bool = False
    compress: bool = False

    @classmethod
    def from_query(cls, query: str) -> WireRequest:
        """Parse a URL's query string; ``ValueError`` names a bad ``ts``."""
        fields = parse_qs(query)
        ts = fields.get("ts", [TimeFormat.NS.value])[-1]
        try:
            time_format = TimeFormat(ts)
        except ValueError:
            choices = "|".join(fmt.value for fmt in TimeFormat)
            raise ValueError(f"ts must be one of {choices}, not {ts[:16]!r}") from None
        return cls(time_format, _flag(fields, "batch"), _flag(fields, "compress"))

    def format(self, extensions: Iterable[Extension]) -> WireFormat:
        """The connection's format once the handshake negotiated ``extensions``."""
        bits = None
        if self.compress:
            for extension in extensions:
                if isinstance(extension, PerMessageDeflate):
                    # No context takeover was required: each message stands alone.
                    assert extension.local_no_context_takeover
                    bits = extension.local_max_window_bits
        return wire_format(self.ts, batch=self.batch, deflate_bits=bits)


def _flag(fields: dict[str, list[str]], name: str) -> bool:
    return fields.get(name, ["0"])[-1] in ("1", "true")


def deflate_offer() -> list[ServerPerMessageDeflateFactory]:
    """The extensions a ``?compress=1`` handshake may negotiate: permessage-deflate with
    ``server_no_context_takeover`` (required: frames are compressed once for everyone)
    and a window of at most ``DEFLATE_WINDOW_BITS``."""
    return [
        ServerPerMessageDeflateFactory(
            server_no_context_takeover=True, server_max_window_bits=DEFLATE_WINDOW_BITS
        )
    ]
