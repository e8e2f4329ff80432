"""A lean websocket client for the bench's client processes.

The scenarios measure servers, so their clients must cost as little as possible: a
client speaking just enough RFC 6455 (the opening handshake, unmasked server frames,
masked client frames, ping -> pong, close), about 1-2 µs of client CPU per frame where
the websockets client costs tens. Subclasses get each text frame with the moment its
bytes arrived (``on_text``) and are told when the handshake is done (``on_open``).

Arrival is the kernel's receive stamp, not the moment this process read the bytes. One
client process holds up to thousands of connections on one core; a server's write to
each of them becomes a readiness event that this process's loop handles one after the
other (~10-20 µs each), so at 5,000 subscribers the last one's bytes wait 50-100 ms in
its socket for the process to get round to them. A stamp taken at that read
(``time.time_ns()`` in ``data_received``) measures this process's queue, not the
server. So each socket has ``SO_TIMESTAMPNS`` set (Linux) and is read with
``recvmsg``: every read carries an ``SCM_TIMESTAMPNS`` control message, a ``struct
timespec`` of CLOCK_REALTIME taken when the packet entered the receive stack (on
loopback: when the server's ``send`` handed it over), the clock ``time.time_ns()``
reads, so arrival minus a server's ``time.time_ns()`` stamp is the time on the way.

What a TCP read's stamp is: Documentation/networking/timestamping.rst says only that
``SO_TIMESTAMPNS`` stamps each incoming packet (its bytestream section is about transmit
stamps); the source says which one a stream read reports (net/ipv4/tcp.c,
``tcp_recvmsg_locked``): the kernel keeps one stamp per skb and, for each skb a read
takes bytes from, overwrites the read's stamp with that skb's
(``tcp_update_recv_tstamps``), then reports the last one; a
segment that is coalesced into the tail skb of the receive queue hands it its newer
stamp (``tcp_try_coalesce``). So a read's stamp is when the newest bytes it returns
arrived: every frame of the read gets it, and a frame that came earlier in the same
read looks later than it was (by up to the gap between the segments). Latencies are
overstated, never understated: conservative. (Checked on this machine's Linux 6.18:
three 10-byte writes 10 ms apart and one read: the stamp is 20 / 10 / 0 ms after the
writes; one write read 50 ms late: the stamp is 0.01-0.03 ms after it.) Enabling any
receive stamp turns on stamping of every incoming packet of the machine (one clock
read each), the same for every server compared.

``on_text`` says which frames have their own stamp: the one that ends the bytes read
(its last bytes are the read's newest). An earlier frame of the same read has its own
stamp only when it came in the same write as the last one. When the server sends every
frame with a write of its own (batch frames), it carries the later arrival of a newer
frame: a client process that falls behind the server, so that a socket holds two
frames when it is read, would overstate it by up to its own lag, the very queue the
stamp is there to leave out.

The connection's socket is the client's own (an ``asyncio.Protocol`` never sees its
socket, so it cannot ask for the control messages): non-blocking, ``TCP_NODELAY``
(as asyncio's transports set it), watched by ``loop.add_reader`` (uvloop and asyncio
both watch a socket that no transport owns), one ``recvmsg_into`` of up to
``READ_SIZE`` bytes per readiness event into one buffer for the process, as asyncio's
transports read once per event. Writes go straight out with ``send``; what the socket
does not take waits in a buffer flushed by ``add_writer``, and ``close`` waits for it.
Where no stamp comes (not Linux, the option refused, or the first packets after the
machine's first socket asked for stamps: the kernel switches stamping on in a deferred
work item, a fraction of a ms later, and packets before it carry none), arrival falls
back to ``time.time_ns()`` at the read; ``ReadCounts`` counts the reads of each kind so
a report can say which clock it used.

Cost: a Python callback, ``recvmsg_into`` (its result tuple and the control message's
list, tuple and 16 bytes) and one ``struct`` unpack per read, where uvloop's transport
read in C and called ``data_received``: ~7,400 more instructions per read (callgrind,
100 connections under uvloop, one 100-byte frame per read: 21,300 per frame, was
13,900), ~6,500 (+12%) in the fan-out subscriber that decodes every frame (61,800 per
frame, was 55,300). Per frame, as before: a header read and one ``bytes`` copy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

_KEY = base64.b64encode(os.urandom(16))
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
CONNECTS_IN_FLIGHT = 64
"""Handshakes in progress at once (a server's accept backlog is 100)."""
READ_SIZE = 256 * 1024
"""Bytes one read takes at most (as asyncio's transports)."""

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
"""``SO_TIMESTAMPNS`` (= ``SCM_TIMESTAMPNS``); Python does not name it: 35 is Linux's
value (``SO_TIMESTAMPNS_OLD``, a native ``struct timespec``) on x86, ARM and RISC-V."""
_TIMESPEC = struct.Struct("@ll")
_READ_BUFFER = bytearray(READ_SIZE)
"""Every read of the process lands here first: the loop runs one callback at a time and
``receive`` copies what it keeps before the next read (no allocation per read)."""
_READ_INTO = (_READ_BUFFER,)
_READ_VIEW = memoryview(_READ_BUFFER)
_CONTROL_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


@dataclass(slots=True)
class ReadCounts:
    """Reads of the clients that share it: ``kernel`` carried the kernel's receive stamp,
    ``fallback`` did not (arrival = ``time.time_ns()`` when read)."""

    kernel: int = 0
    fallback: int = 0

    def reset(self) -> None:
        self.kernel = self.fallback = 0


def arrival_clock(kernel: int, fallback: int) -> str:
    """Which clock stamped the arrivals of ``kernel`` + ``fallback`` reads (``ReadCounts``),
    for a report's notes."""
    reads = kernel + fallback
    if not reads:
        return "arrival clock: no client reads counted"
    kernel_stamp = "arrival = the kernel's receive stamp (SO_TIMESTAMPNS)"
    if not fallback:
        return f"{kernel_stamp} on all {reads:,} client reads"
    return (
        f"{kernel_stamp} on {kernel / reads:.1%} of {reads:,} client reads, time.time_ns() "
        "when read on the rest (those include the client process's own queue)"
    )


class CountedReads(Protocol):
    """A measurement window's client reads, by clock (what ``ReadCounts`` counted)."""

    @property
    def kernel_reads(self) -> int: ...

    @property
    def fallback_reads(self) -> int: ...


def arrival_clock_of(windows: Iterable[CountedReads]) -> str:
    """``arrival_clock`` over the reads of all ``windows`` (a report's trials)."""
    counted = list(windows)
    return arrival_clock(
        sum(window.kernel_reads for window in counted),
        sum(window.fallback_reads for window in counted),
    )


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask), masked with a fresh key: one XOR of two big
    ints, ~1 µs for a request-sized payload."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = (mask * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
    return header + mask + body


def handshake_request(host: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class LeanWebsocket:
    """One websocket client connection; see the module docstring."""

    def __init__(self, host: str, path: str) -> None:
        self._request = handshake_request(host, path)
        self._buffer = bytearray()
        self._open = False
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._unsent = bytearray()
        self._closing = False
        self._reads = ReadCounts()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        """Resolved when the client is ready (subclasses decide when: ``set_ready``)."""

    # -- hooks ----------------------------------------------------------------------------

    def on_open(self) -> None:
        """The handshake is done (default: ready at once)."""
        self.set_ready()

    def on_text(self, payload: bytes, arrival: int, own_stamp: bool) -> None:
        """One text frame; ``arrival`` is the kernel's receive stamp of the read that
        returned its last bytes, in ``time.time_ns()`` nanoseconds (module docstring).
        ``own_stamp``: the frame ends the bytes read, so ``arrival`` is when its own last
        bytes came; False: newer bytes came in the same read, and ``arrival`` is theirs
        (the frame's own arrival may be earlier)."""

    def on_closed(self) -> None:
        """The connection is gone."""

    # -- for subclasses -------------------------------------------------------------------

    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def send_text(self, payload: bytes) -> None:
        self.send(masked_frame(OP_TEXT, payload))

    def send(self, frame: bytes) -> None:
        """Write ``frame`` now, or after what is still waiting: one ``send`` call."""
        sock = self._sock
        if sock is None or self._closing:
            return
        if self._unsent:
            self._unsent += frame
            return
        try:
            sent = sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._finish(exc)
            return
        if sent < len(frame):
            self._unsent += frame[sent:]
            self._loop.add_writer(sock.fileno(), self._writable)

    def close(self) -> None:
        """Send a close frame and close the socket once everything written went out."""
        if self._sock is None or self._closing:
            return
        self.send(masked_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        self._closing = True
        if not self._unsent:
            self._finish(None)

    # -- the connection -------------------------------------------------------------------

    async def connect(self, address: tuple[int, tuple[Any, ...]], reads: ReadCounts) -> None:
        """Connect to ``address`` (family, sockaddr), send the handshake request and read;
        ``reads`` counts this client's reads (shared by a process's clients)."""
        family, sockaddr = address
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if SO_TIMESTAMPNS is not None:
                # Refused: no kernel stamps, reads fall back to time.time_ns() (counted).
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await self._loop.sock_connect(sock, sockaddr)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._recvmsg_into = sock.recvmsg_into
        self._reads = reads
        self._loop.add_reader(sock.fileno(), self._readable)
        self.send(self._request)

    def _readable(self) -> None:
        """One read into the process's read buffer, with its stamp (the only control
        message asked for). What does not fit waits for the next call: uvloop and asyncio
        watch level-triggered, as asyncio's own transports read once per event."""
        try:
            size, control, _, _ = self._recvmsg_into(_READ_INTO, _CONTROL_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        if not size:  # the server closed its side
            self._finish(None)
        elif control:
            seconds, nanoseconds = _TIMESPEC.unpack_from(control[0][2])
            self._reads.kernel += 1
            self.receive(_READ_VIEW[:size], seconds * 1_000_000_000 + nanoseconds)
        else:
            self._reads.fallback += 1
            self.receive(_READ_VIEW[:size], time.time_ns())

    def _writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._loop.remove_writer(sock.fileno())
            if self._closing:
                self._finish(None)

    def _finish(self, exc: Exception | None) -> None:
        """The connection is over (closed by either side, or failed): once."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._loop.remove_reader(sock.fileno())
        self._loop.remove_writer(sock.fileno())
        sock.close()
        self._unsent.clear()
        self.on_closed()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    # -- the protocol (sans I/O) ----------------------------------------------------------

    def receive(self, data: bytes | memoryview, arrival: int) -> None:
        """Bytes read from the server, which arrived at ``arrival`` (ns): parse every
        complete frame they finish. Per frame: a header read and one ``bytes`` copy of the
        payload."""
        buffer = self._buffer
        buffer += data
        if not self._open and not self._handshake():
            return
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > size:
                break
            opcode = buffer[pos] & 0x0F
            payload = bytes(buffer[pos + header : end])
            pos = end
            if opcode == OP_TEXT:
                self.on_text(payload, arrival, pos == size)
            elif opcode == OP_PING:
                self.send(masked_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.send(masked_frame(OP_CLOSE, payload[:2]))
                self._closing = True
                if not self._unsent:
                    self._finish(None)
                break
        del buffer[:pos]

    def _handshake(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        status = bytes(buffer[:end]).split(b"\r\n", 1)[0]
        del buffer[: end + 4]
        if b" 101 " not in status:
            self.ready.set_exception(ConnectionError(f"handshake refused: {status!r}"))
            self._finish(None)
            return False
        self._open = True
        self.on_open()
        return True


W = TypeVar("W", bound=LeanWebsocket)


async def open_connections(
    host: str,
    port: int,
    count: int,
    make: Callable[[int], W],
    reads: ReadCounts | None = None,
) -> list[W]:
    """``count`` connections made by ``make(index)``, ``CONNECTS_IN_FLIGHT`` at a time,
    each awaited until ready; in index order. ``reads`` counts their reads."""
    loop = asyncio.get_running_loop()
    family, _, _, _, sockaddr = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
    address = (int(family), tuple(sockaddr))
    shared = reads if reads is not None else ReadCounts()
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    clients: list[W | None] = [None] * count

    async def one(index: int) -> None:
        async with gate:
            client = make(index)
            await client.connect(address, shared)
            await client.ready
            clients[index] = client

    async with asyncio.TaskGroup() as tasks:
        for index in range(count):
            tasks.create_task(one(index))
    return [client for client in clients if client is not None]
