"""Sending to a socket at once instead of at the end of the event loop's turn.

uvloop defers a transport write that stays under the high-water mark: ``write`` only
buffers the bytes, and the loop sends every buffered stream after the turn's ready
callbacks have all run. A publish tick writes to every subscriber in one callback, so a
change that a later callback of the same turn publishes (a feed's next message) waits
behind the sends of the whole tick before the next tick can even encode it: at 1,000
subscribers, several milliseconds of end-to-end latency that the tick's own writes did
not need.

``send_now`` sends with one ``write(2)`` while the transport holds nothing unsent (so the
bytes keep their order with what the transport sends), and hands the transport whatever
the socket did not take, as ``write`` would have. asyncio's own socket transports do the
same inside ``write``; there it changes nothing.
"""

from __future__ import annotations

import asyncio
import os


def socket_fd(transport: asyncio.BaseTransport) -> int:
    """The descriptor ``send_now`` may write to: a plain (not TLS) socket transport's, on
    POSIX; -1 (always use the transport) otherwise."""
    if os.name != "posix" or transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    try:
        return int(sock.fileno())
    except (OSError, ValueError):
        return -1


def send_now(transport: asyncio.WriteTransport, fd: int, data: bytes) -> None:
    """Send ``data`` on ``transport`` (whose socket is ``fd``, see ``socket_fd``), into the
    socket now when the transport has nothing buffered; the rest through the transport.
    Call only while the transport is open (not closing)."""
    if fd >= 0 and not transport.get_write_buffer_size():
        try:
            sent = os.write(fd, data)
        except OSError:  # full (EAGAIN), or broken: the transport meets it and reports it
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
