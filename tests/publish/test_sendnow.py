"""Frames go into the socket during the tick that wrote them, under asyncio's loop and
uvloop's (which defers a transport's writes to the end of the loop's turn); bytes the
socket cannot take go through the transport, in order; a broken connection is reported
by the transport, never raised at the writer."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import pytest
import uvloop
from websockets.asyncio.client import connect

from book.snapshot import BookSnapshot
from book.status import InstrumentState
from publish.client import ServerLimits
from publish.fanout import Fanout
from publish.sendnow import send_now, socket_fd
from publish.server import MarketServer
from tests.publish.support import (
    BTC,
    CAPTURE_DEPTH,
    INSTRUMENTS,
    Feed,
    clock,
    new_registry,
    receive,
    send,
    wait_until,
)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "asyncio": None,
    "uvloop": uvloop.new_event_loop,
}


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


def readable(sock: socket.socket | int) -> bool:
    """The kernel holds bytes for ``sock`` right now (no waiting, no loop turn)."""
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


class Holder(asyncio.Protocol):
    """The server end of a plain TCP connection: its transport, and how it ended."""

    def __init__(self) -> None:
        self.made: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.set_result(cast(asyncio.Transport, transport))  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@dataclass(frozen=True, slots=True)
class Pair:
    """One connection to a loop server: the server side's protocol and transport, and the
    client's blocking socket."""

    holder: Holder
    transport: asyncio.Transport
    client: socket.socket


@asynccontextmanager
async def connected_pair() -> AsyncIterator[Pair]:
    """A loop server with one connection; both closed at the end."""
    loop = asyncio.get_running_loop()
    holder: Holder | None = None

    def factory() -> Holder:
        nonlocal holder
        holder = Holder()
        return holder

    server = await loop.create_server(factory, "127.0.0.1", 0)
    client = socket.create_connection(("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        await wait_until(lambda: holder is not None, what="the server side of the connection")
        assert holder is not None
        yield Pair(holder, await asyncio.wait_for(holder.made, 5), client)
    finally:
        client.close()
        server.close()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    sock.settimeout(5)
    while got < size:
        chunk = sock.recv(min(1 << 20, size - got))
        assert chunk, f"connection ended after {got} of {size} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("loop", LOOPS)
def test_bytes_are_in_the_socket_when_send_now_returns(loop: str) -> None:
    async def main() -> None:
        async with connected_pair() as pair:
            fd = socket_fd(pair.transport)
            assert fd >= 0
            send_now(pair.transport, fd, b"first")
            # No await since: the loop has not had a turn to send anything for us.
            assert pair.transport.get_write_buffer_size() == 0
            assert readable(pair.client)
            assert pair.client.recv(100) == b"first"

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_what_the_socket_does_not_take_follows_through_the_transport_in_order(loop: str) -> None:
    async def main() -> None:
        async with connected_pair() as pair:
            transport = pair.transport
            fd = socket_fd(transport)
            sent: list[bytes] = []
            block = 0
            while not transport.get_write_buffer_size():  # until the kernel is full
                data = struct.pack(">I", block) * 16_384
                send_now(transport, fd, data)
                sent.append(data)
                block += 1
                assert block < 10_000, "the socket never filled"
            tail = [b"after the socket filled", b"and the one after that"]
            for data in tail:
                send_now(transport, fd, data)  # must queue behind the unsent bytes
                assert transport.get_write_buffer_size()
            expected = b"".join(sent + tail)
            reading = asyncio.get_running_loop().run_in_executor(
                None, read_exactly, pair.client, len(expected)
            )
            assert await asyncio.wait_for(reading, 10) == expected

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reset_connection_is_reported_by_the_transport(loop: str) -> None:
    async def main() -> None:
        async with connected_pair() as pair:
            holder, transport = pair.holder, pair.transport
            pair.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            pair.client.close()  # linger 0: a reset, not a FIN
            fd = socket_fd(transport)
            for _ in range(100):  # the first write may still succeed; the reset then shows
                if holder.lost.done() or transport.is_closing():
                    break
                send_now(transport, fd, b"x" * 1024)
                await asyncio.sleep(0.01)
            await asyncio.wait_for(holder.lost, 5)

    run_on(loop, main)


class TlsTransport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return object() if name == "sslcontext" else default


def test_a_tls_transport_is_never_written_around() -> None:
    assert socket_fd(TlsTransport()) == -1


@pytest.mark.parametrize("loop", LOOPS)
def test_a_tick_leaves_its_frames_in_each_subscribers_socket(loop: str) -> None:
    """End to end: when a tick reports its frames written (``on_written``, at its end,
    still inside the tick's callback), every subscriber's kernel socket holds them."""

    async def main() -> None:
        registry = new_registry(INSTRUMENTS)
        feed = Feed(registry)
        holding: list[list[bool]] = []
        sockets: list[int] = []

        def written(snapshots: Iterable[BookSnapshot], _at: int) -> None:
            if list(snapshots):
                holding.append([readable(sock) for sock in sockets])

        fanout = Fanout(registry, clock=clock, book_depth=CAPTURE_DEPTH, on_written=written)
        feed.status(BTC, InstrumentState.LIVE)
        async with (
            MarketServer(registry, fanout, limits=ServerLimits()) as server,
            connect(server.url) as one,
            connect(server.url) as two,
        ):
            for ws in (one, two):
                await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC])
                await receive(ws)  # the ack
            sockets.extend(ws.transport.get_extra_info("socket").fileno() for ws in (one, two))
            feed.quote(BTC, ("100", "1"), ("101", "1"))
            await wait_until(lambda: bool(holding), what="a tick with the change")
            assert holding == [[True, True]]
            for ws in (one, two):
                assert (await receive(ws))["type"] == "bbo"

    run_on(loop, main)
