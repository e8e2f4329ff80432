"""The lean client's frames are what RFC 6455 says: masked, with the right length form,
and a real websockets server understands them; arrival is the kernel's receive stamp,
not the moment the client's loop got round to the read; writes the socket cannot take
at once go out later, in order, under asyncio's loop and uvloop's."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from websockets.asyncio.server import ServerConnection, serve

from bench.leanws import (
    OP_TEXT,
    LeanWebsocket,
    ReadCounts,
    arrival_clock,
    masked_frame,
    open_connections,
)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "asyncio": None,
    "uvloop": uvloop.new_event_loop,
}
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: unchecked\r\n\r\n"
)


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


def unmasked(frame: bytes) -> tuple[int, bytes]:
    assert frame[0] & 0x80 and frame[1] & 0x80  # FIN, MASK
    length, pos = frame[1] & 0x7F, 2
    if length == 126:
        length, pos = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, pos = int.from_bytes(frame[2:10], "big"), 10
    mask, body = frame[pos : pos + 4], frame[pos + 4 :]
    assert len(body) == length
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536])
def test_masked_frames_unmask_to_their_payload(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert unmasked(masked_frame(OP_TEXT, payload)) == (OP_TEXT, payload)


class Echoed(LeanWebsocket):
    def __init__(self, host: str, path: str) -> None:
        super().__init__(host, path)
        self.received: list[bytes] = []

    def on_open(self) -> None:
        self.send_text(b'{"hello":"\xc3\xa9"}' * 20)

    def on_text(self, payload: bytes, arrival: int, own_stamp: bool) -> None:
        self.received.append(payload)
        self.set_ready()


async def test_a_websockets_server_reads_what_the_lean_client_sends() -> None:
    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        clients = await asyncio.wait_for(
            open_connections("127.0.0.1", port, 3, lambda _: Echoed(f"127.0.0.1:{port}", "/")),
            10,
        )
        assert [client.received for client in clients] == [['{"hello":"é"}'.encode() * 20]] * 3
        for client in clients:
            client.close()


class Recorder(LeanWebsocket):
    def __init__(self) -> None:
        super().__init__("127.0.0.1", "/")
        self.frames: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
        self.own_stamps: list[bool] = []
        self.closed = 0

    def on_text(self, payload: bytes, arrival: int, own_stamp: bool) -> None:
        self.frames.put_nowait((payload, arrival))
        self.own_stamps.append(own_stamp)

    def on_closed(self) -> None:
        self.closed += 1


async def accepted(client: Recorder, reads: ReadCounts) -> socket.socket:
    """A raw server socket connected to ``client``, the handshake done (its request read,
    not checked)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        await client.connect((socket.AF_INET, listener.getsockname()), reads)
        server, _ = listener.accept()
    server.settimeout(10)
    request = b""
    while not request.endswith(b"\r\n\r\n"):
        request += server.recv(4096)
    assert request.startswith(b"GET / HTTP/1.1\r\n")
    server.sendall(SWITCHING)
    await asyncio.wait_for(client.ready, 10)
    return server


def text_frame(payload: bytes) -> bytes:
    return bytes((0x80 | OP_TEXT, len(payload))) + payload


@pytest.mark.skipif(sys.platform != "linux", reason="SO_TIMESTAMPNS is Linux's")
@pytest.mark.parametrize("loop", list(LOOPS))
def test_arrival_is_when_the_bytes_reached_the_socket_not_when_the_loop_read_them(
    loop: str,
) -> None:
    async def main() -> None:
        reads = ReadCounts()
        client = Recorder()
        with await accepted(client, reads) as server:
            # The kernel turns stamping on for the machine in a deferred work item when the
            # first socket asks for it: packets before that come unstamped (and counted).
            for _ in range(1000):
                kernel = reads.kernel
                server.sendall(text_frame(b"warm-up"))
                await asyncio.wait_for(client.frames.get(), 10)
                if reads.kernel > kernel:
                    break
                await asyncio.sleep(0.001)
            reads.reset()
            written = time.time_ns()
            server.sendall(text_frame(b"tick"))
            time.sleep(0.05)  # noqa: ASYNC251 (the point: the loop is busy, the frame waits)
            payload, arrival = await asyncio.wait_for(client.frames.get(), 10)
            read = time.time_ns()
            assert payload == b"tick"
            assert read - written >= 50_000_000
            assert (reads.kernel, reads.fallback) == (1, 0)
            # The kernel's stamp: microseconds after the write (20 ms leaves room for a
            # loaded machine), where a stamp taken at the read is >= 50 ms after it.
            assert 0 <= arrival - written < 20_000_000
            client.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_only_the_frame_that_ends_a_read_has_its_own_stamp(loop: str) -> None:
    async def main() -> None:
        client = Recorder()
        with await accepted(client, ReadCounts()) as server:
            server.sendall(text_frame(b"older"))
            time.sleep(0.02)  # noqa: ASYNC251 (the loop is busy: both frames wait for one read)
            server.sendall(text_frame(b"newer"))
            time.sleep(0.02)  # noqa: ASYNC251
            older = await asyncio.wait_for(client.frames.get(), 10)
            newer = await asyncio.wait_for(client.frames.get(), 10)
            assert (older[0], newer[0]) == (b"older", b"newer")
            # One read, one stamp: the newer frame's, 20 ms after the older one arrived.
            assert older[1] == newer[1]
            assert client.own_stamps == [False, True]
            server.sendall(text_frame(b"alone"))
            assert (await asyncio.wait_for(client.frames.get(), 10))[0] == b"alone"
            assert client.own_stamps == [False, True, True]
            client.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_writes_the_socket_cannot_take_at_once_go_out_later_in_order(loop: str) -> None:
    payloads = [bytes([65 + i]) * 3_000_000 for i in range(3)]

    async def main() -> None:
        client = Recorder()
        with await accepted(client, ReadCounts()) as server:
            for payload in payloads:
                client.send_text(payload)  # 9 MB: more than the socket buffers hold
            assert client._unsent  # some of it waits for the socket
            client.close()  # sent once the rest went out
            received = bytearray()

            def drain() -> None:
                while chunk := server.recv(1 << 20):
                    received.extend(chunk)

            await asyncio.wait_for(asyncio.to_thread(drain), 30)  # ends at the client's FIN
            assert client.closed == 1

        frames, pos = [], 0
        while pos < len(received):
            length, header = int.from_bytes(received[pos + 2 : pos + 10], "big"), 10
            if received[pos + 1] & 0x7F == 126:
                length, header = int.from_bytes(received[pos + 2 : pos + 4], "big"), 4
            elif received[pos + 1] & 0x7F < 126:
                length, header = received[pos + 1] & 0x7F, 2
            frames.append(unmasked(bytes(received[pos : pos + header + 4 + length])))
            pos += header + 4 + length
        assert frames == [(OP_TEXT, payload) for payload in payloads] + [
            (0x8, (1000).to_bytes(2, "big"))
        ]

    run_on(loop, main)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_pings_are_answered_and_a_server_close_ends_the_connection(loop: str) -> None:
    async def main() -> None:
        client = Recorder()
        with await accepted(client, ReadCounts()) as server:
            server.sendall(bytes((0x89, 2)) + b"hi" + bytes((0x88, 2)) + (1001).to_bytes(2, "big"))
            replies = b""
            while len(replies) < 16:  # pong and close, each 2 + 4 (mask) + 2 bytes
                chunk = await asyncio.to_thread(server.recv, 4096)
                if not chunk:
                    break
                replies += chunk
            assert unmasked(replies[:8]) == (0xA, b"hi")
            assert unmasked(replies[8:16]) == (0x8, (1001).to_bytes(2, "big"))
            assert await asyncio.to_thread(server.recv, 4096) == b""  # the client closed
            assert client.closed == 1

    run_on(loop, main)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_websockets_server_reads_what_the_lean_client_sends_on_either_loop(loop: str) -> None:
    run_on(loop, test_a_websockets_server_reads_what_the_lean_client_sends)


def test_the_report_names_the_clock_it_used() -> None:
    assert arrival_clock(0, 0) == "arrival clock: no client reads counted"
    assert "on all 1,200 client reads" in arrival_clock(1_200, 0)
    assert "on 75.0% of 1,200 client reads, time.time_ns()" in arrival_clock(900, 300)
