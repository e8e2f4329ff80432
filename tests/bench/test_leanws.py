"""The lean client's frames are what RFC 6455 says: masked, with the right length form,
and a real websockets server understands them."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from bench.leanws import OP_TEXT, LeanWebsocket, masked_frame, open_connections


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

    def on_text(self, payload: bytes, arrival: int) -> None:
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
