"""Whole client text frames read straight from the bytes a connection received.

websockets parses every frame through a chain of generators (the protocol's parser,
``Frame.parse``, its stream reader), then builds a ``Frame`` and an event list: a few
microseconds per request that a busy order-entry server spends again on every open.
A client request is nearly always one small text frame, unfragmented, masked (as RFC
6455 requires of a client), with no extension bits, and usually alone in its read.
``next_text_frame`` recognises exactly that shape at the start of a buffer and gives
its unmasked payload; any other shape (a fragment, a control or binary frame, a
compressed frame, reserved bits, an unmasked frame, a 64-bit length, a frame past the
size limit, or one not wholly received) is ``None`` and is left to websockets, which
parses it, and refuses what is wrong, exactly as it always did.

Its caller (``publish.server.WatchedConnection``) may only use it where websockets'
parser would start a new frame (``between_frames``): nothing buffered in its reader, no
fragmented message in progress (a text frame then would be a protocol error), the
connection open, and the parser not holding the start of a frame whose rest has not
come yet (it consumes a header as soon as the header is whole).
"""

from __future__ import annotations

from websockets.protocol import Protocol, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

FIN_TEXT = 0x81
"""First byte of an unfragmented text frame with no reserved (extension) bit set."""
MASKED = 0x80
"""The mask bit of the second byte."""
LENGTH_16 = 126
"""A 7-bit length of 126: the length follows as 16 bits."""
LENGTH_64 = 127
"""A 7-bit length of 127: the length follows as 64 bits (never a request: left alone)."""


def next_text_frame(data: bytes, start: int, max_size: int | None) -> tuple[bytes, int] | None:
    """The unmasked payload of the whole simple text frame at ``data[start:]`` and the
    offset just past it, or ``None`` when the bytes there are not one (see the module
    docstring); ``max_size`` is websockets' limit on a frame's payload (``None``: none).
    O(frame)."""
    available = len(data) - start
    if available < 6 or data[start] != FIN_TEXT:
        return None
    second = data[start + 1]
    if not second & MASKED:
        return None
    length = second & 0x7F
    if length == LENGTH_64:
        return None
    head = 6
    if length == LENGTH_16:
        if available < 8:
            return None
        length = int.from_bytes(data[start + 2 : start + 4], "big")
        head = 8
    end = start + head + length
    if end > len(data) or (max_size is not None and length > max_size):
        return None
    mask = data[start + head - 4 : start + head]
    return apply_mask(data[start + head : end], mask), end


def between_frames(protocol: Protocol) -> bool:
    """websockets' parser waits for the first byte of a frame: the connection is open, no
    fragmented message is in progress, nothing is buffered, and the parser is suspended
    where its frame loop (``Protocol.parse``, which the server's handshake parser went
    on to) looks for the next frame (``StreamReader.at_eof``). False whenever this
    websockets keeps that state elsewhere."""
    reader = getattr(protocol, "reader", None)
    if (
        protocol.state is not State.OPEN
        or getattr(protocol, "current_size", 0) is not None
        or reader is None
        or reader.buffer
    ):
        return False
    outer, inner = None, getattr(protocol, "parser", None)
    while (deeper := getattr(inner, "gi_yieldfrom", None)) is not None:
        outer, inner = inner, deeper
    return (
        getattr(inner, "gi_code", None) is _AWAITING_FRAME
        and getattr(outer, "gi_code", None) is _FRAME_LOOP
    )


_AWAITING_FRAME = StreamReader.at_eof.__code__
_FRAME_LOOP = Protocol.parse.__code__
