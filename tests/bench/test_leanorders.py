"""The lean Python order server of scenario 6: real sockets, a real websockets client, a
real SQLite file. It acks an open only once its row is committed, refuses what
marketcast refuses with marketcast's codes, and closes on a frame it does not serve."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.leanorders import LeanOrderServer
from publish.auth import TokenAuthority

INSTRUMENT = "bench:SYM0000-USD"
SECRET = os.urandom(16).hex()


@asynccontextmanager
async def lean_server() -> AsyncIterator[LeanOrderServer]:
    server = LeanOrderServer(SECRET, (INSTRUMENT,))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def ask(client: ClientConnection, request: dict[str, object]) -> dict[str, object]:
    await client.send(orjson.dumps(request).decode())
    reply: dict[str, object] = orjson.loads(await asyncio.wait_for(client.recv(), 5))
    return reply


def open_request(request_id: int, position_id: str, **fields: str) -> dict[str, object]:
    position = {"id": position_id, "instrument": INSTRUMENT, "side": "buy", "qty": "0.5"}
    position |= {"price": "43000.1"} | fields
    return {"op": "position.open", "id": request_id, "position": position}


def stored(server: LeanOrderServer) -> list[tuple[str, str, str, str]]:
    with closing(sqlite3.connect(server.path)) as conn:
        rows = conn.execute("SELECT account, id, qty, entry_px FROM positions").fetchall()
    return [tuple(row) for row in rows]


async def test_an_open_is_acked_after_its_commit_with_marketcasts_ack() -> None:
    token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=60)
    async with lean_server() as server, connect(server.url, compression=None) as client:
        auth = await ask(client, {"op": "auth", "id": 1, "token": token})
        assert auth == {"type": "ack", "id": 1, "op": "auth", "account": "acct-1"}
        ack = await ask(client, open_request(2, "p-1"))
        assert ack["type"] == "ack" and ack["id"] == 2 and ack["op"] == "position.open"
        position = ack["position"]
        assert isinstance(position, dict)
        assert position["account"] == "acct-1" and position["qty"] == "0.5"
        assert stored(server) == [("acct-1", "p-1", "0.5", "43000.1")]


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (open_request(3, "p-1"), "duplicate_position"),
        (open_request(4, "p-2", instrument="bench:NOPE"), "unknown_instrument"),
        (open_request(5, "p-3", qty="-1"), "invalid_position"),
        (open_request(6, "p-4", price="lots"), "invalid_position"),
        ({"op": "subscribe", "id": 7}, "unknown_op"),
    ],
)
async def test_a_bad_open_is_refused_with_marketcasts_code(
    request_: dict[str, object], code: str
) -> None:
    token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=60)
    async with lean_server() as server, connect(server.url, compression=None) as client:
        await ask(client, {"op": "auth", "id": 1, "token": token})
        assert (await ask(client, open_request(2, "p-1")))["type"] == "ack"
        refusal = await ask(client, request_)
        assert refusal["type"] == "error" and refusal["code"] == code
        assert refusal["id"] == request_["id"]
        assert [row[1] for row in stored(server)] == ["p-1"]


async def test_an_open_before_auth_or_with_a_forged_token_is_refused() -> None:
    forged = TokenAuthority(b"another secret of 32 characters!").issue("acct-1", ttl=60)
    async with lean_server() as server, connect(server.url, compression=None) as client:
        assert (await ask(client, open_request(1, "p-1")))["code"] == "auth_required"
        assert (await ask(client, {"op": "auth", "id": 2, "token": forged}))["code"] == (
            "token_invalid"
        )
        assert (await ask(client, open_request(3, "p-1")))["code"] == "auth_required"
        assert stored(server) == []


def masked_text_frame(payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A client's text frame (RFC 6455: masked), payload under 64 KiB."""
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    if len(payload) < 126:
        return bytes((0x81, 0x80 | len(payload))) + mask + masked
    return bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big") + mask + masked


async def test_a_frame_a_read_cut_short_is_served_once_its_rest_comes() -> None:
    token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=60)
    async with lean_server() as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
            frame = masked_text_frame(b'{"op":"auth","id":1,"token":"' + token.encode() + b'"}')
            for part in (frame[:1], frame[1:9], frame[9:]):  # three reads: 16-bit length
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
            first, length = await asyncio.wait_for(reader.readexactly(2), 5)
            assert first == 0x81 and length < 126
            reply = orjson.loads(await reader.readexactly(length))
            assert reply == {"type": "ack", "id": 1, "op": "auth", "account": "acct-1"}
        finally:
            writer.close()


async def test_a_frame_it_does_not_serve_closes_the_connection() -> None:
    async with lean_server() as server, connect(server.url, compression=None) as client:
        await client.send(b"\x00binary")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), 5)
