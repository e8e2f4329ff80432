"""A lean websocket client protocol for the bench's client processes.

The scenarios measure servers, so their clients must cost as little as possible: an
``asyncio.Protocol`` speaking just enough RFC 6455 (the opening handshake, unmasked server
frames, masked client frames, ping -> pong, close), about 1-2 µs of client CPU per frame
where the websockets client costs tens. Subclasses get each text frame with the moment
its chunk arrived (``on_text``) and are told when the handshake is done (``on_open``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from typing import TypeVar, cast

_KEY = base64.b64encode(os.urandom(16))
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
CONNECTS_IN_FLIGHT = 64
"""Handshakes in progress at once (a server's accept backlog is 100)."""


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


class LeanWebsocket(asyncio.Protocol):
    """One websocket client connection; see the module docstring."""

    def __init__(self, host: str, path: str) -> None:
        self._request = handshake_request(host, path)
        self._buffer = bytearray()
        self._open = False
        self._transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Resolved when the client is ready (subclasses decide when: ``set_ready``)."""

    # -- hooks ----------------------------------------------------------------------------

    def on_open(self) -> None:
        """The handshake is done (default: ready at once)."""
        self.set_ready()

    def on_text(self, payload: bytes, arrival: int) -> None:
        """One text frame; ``arrival`` is ``time.time_ns()`` when its chunk was read."""

    def on_closed(self) -> None:
        """The connection is gone."""

    # -- for subclasses -------------------------------------------------------------------

    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def send_text(self, payload: bytes) -> None:
        self.send(masked_frame(OP_TEXT, payload))

    def send(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self.send(masked_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            self._transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_closed()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def data_received(self, data: bytes) -> None:
        arrival = time.time_ns()
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
                self.on_text(payload, arrival)
            elif opcode == OP_PING:
                self.send(masked_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.send(masked_frame(OP_CLOSE, payload[:2]))
                if self._transport is not None:
                    self._transport.close()
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
            if self._transport is not None:
                self._transport.close()
            return False
        self._open = True
        self.on_open()
        return True


W = TypeVar("W", bound=LeanWebsocket)


async def open_connections(host: str, port: int, count: int, make: Callable[[int], W]) -> list[W]:
    """``count`` connections made by ``make(index)``, ``CONNECTS_IN_FLIGHT`` at a time,
    each awaited until ready; in index order."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    clients: list[W | None] = [None] * count

    async def one(index: int) -> None:
        async with gate:
            client = make(index)
            await loop.create_connection(lambda: client, host, port)
            await client.ready
            clients[index] = client

    async with asyncio.TaskGroup() as tasks:
        for index in range(count):
            tasks.create_task(one(index))
    return [client for client in clients if client is not None]
