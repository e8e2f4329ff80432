"""The lean Python order server: the least a Python server does to acknowledge a
``position.open`` after its commit, as a reference beside marketcast in scenario 6.

It speaks what the bench's clients speak and nothing more: the websocket handshake, then
unfragmented masked text frames (``publish.clientframes``; a frame a read cut short
waits for the rest, any other frame closes the connection). ``auth`` checks the token
as marketcast does (``publish.auth``) and sets the connection's account.
``position.open`` is checked (authenticated, a known instrument, a side, positive exact
amounts, an id the account has not used) and its row queued for the bare storage
floor's group commit (``bench.positionfloor``: SQLite in 5 ms windows, a writer thread,
the backend's pragmas, schema and checkpoints); once the commit is done each open gets
marketcast's own ack frame (``encode_position_ack``). A refusal is marketcast's error
frame, at once.

What it leaves out is what marketcast adds per op: the websockets protocol object and its
checks, sessions, rate limits, the position book's per-account limits and timeouts, the
profit engine, metrics and latency stages, the flusher's futures and health, the outbox.
So the gap between the two, at the same rates in the same run, is the price of those
layers in CPython, and this server's own limit is that of the language, the machine and
the group commit.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import orjson
from websockets.utils import accept_key

from bench.positionfloor import GroupCommit, PositionParams, SqliteWriter
from bench.stagewindow import StageWindow
from book.fixed import format_fixed, parse_fixed
from publish.auth import TokenAuthority
from publish.clientframes import FIN_TEXT, MASKED, next_text_frame
from publish.exceptions import RequestError, TokenError
from publish.position import Position, PositionSide
from publish.protocol import (
    ErrorCode,
    Op,
    RequestId,
    encode_error,
    encode_position_ack,
    text_frame_header,
)

WINDOW_MS = 5.0
MAX_FRAME_BYTES = 64 * 1024
MAX_HEADER_BYTES = 8
"""A client frame's header with a 16-bit length and its mask."""
MAX_HEAD_BYTES = 8 * 1024
_KEY_HEADER = b"sec-websocket-key:"
_SIDES = frozenset(side.value for side in PositionSide)


def text_frame(payload: bytes) -> bytes:
    """An unmasked server text frame of ``payload`` (under 64 KiB)."""
    return text_frame_header(len(payload)) + payload


def _frame_cut_short(data: bytes, start: int) -> bool:
    """``data[start:]``, which ``next_text_frame`` did not take, may be a simple masked
    text frame whose rest has not been read yet: it starts like one and is shorter than
    the longest one (``next_text_frame`` then takes it once whole, or it grows past that
    and is not one)."""
    rest = len(data) - start
    if rest < 2:
        return True
    starts_like_one = data[start] == FIN_TEXT and bool(data[start + 1] & MASKED)
    return starts_like_one and rest < MAX_HEADER_BYTES + MAX_FRAME_BYTES


def _request_id(request: object) -> RequestId:
    """The request's ``id`` when it is one marketcast echoes (an int or a string)."""
    value = request.get("id") if isinstance(request, dict) else None
    return value if isinstance(value, int | str) else None


@dataclass(frozen=True, slots=True)
class _Waiting:
    """An open waiting for its commit: where its ack goes."""

    connection: _LeanConnection
    request_id: RequestId
    position: Position


class LeanOrderServer:
    """The server (module docstring): ``start`` listens on a free loopback port."""

    def __init__(self, secret: str, instruments: tuple[str, ...]) -> None:
        self._tokens = TokenAuthority(secret.encode())
        self.instruments = frozenset(instruments)
        self._directory = tempfile.TemporaryDirectory(prefix="marketcast-bench-lean-")
        self.path = Path(self._directory.name) / "lean.db"
        self._writer = SqliteWriter(str(self.path))
        self._group: GroupCommit[_Waiting] = GroupCommit(self._writer, WINDOW_MS, self._acknowledge)
        self.taken: set[tuple[str, str]] = set()
        """Every (account, id) opened, committed or not: a second open of one is refused."""
        self._committing: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self.url = ""
        self.ops = StageWindow()
        """Never watched: this server keeps no stages."""

    async def start(self) -> None:
        await self._writer.open()
        loop = asyncio.get_running_loop()
        self._committing = loop.create_task(self._group.commit())
        self._server = await loop.create_server(lambda: _LeanConnection(self), "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._group.stop()
        if self._committing is not None:
            await self._committing
        await self._writer.close()
        self._directory.cleanup()

    def account_of(self, token: object) -> str:
        if not isinstance(token, str):
            raise RequestError(ErrorCode.BAD_REQUEST, "auth needs a token")
        try:
            return self._tokens.verify(token).account
        except TokenError as error:
            raise RequestError(error.code, str(error)) from None

    def open(self, connection: _LeanConnection, request_id: RequestId, request: object) -> None:
        """Check an open and queue its row; ``RequestError`` says why not."""
        account = connection.account
        if account is None:
            raise RequestError(ErrorCode.AUTH_REQUIRED, "authenticate first")
        if not isinstance(request, dict):
            raise RequestError(ErrorCode.BAD_REQUEST, "position.open needs a position")
        position_id, instrument = request.get("id"), request.get("instrument")
        side, qty, price = request.get("side"), request.get("qty"), request.get("price")
        if not isinstance(position_id, str) or not position_id:
            raise RequestError(ErrorCode.INVALID_POSITION, "a position needs an id")
        if instrument not in self.instruments:
            raise RequestError(ErrorCode.UNKNOWN_INSTRUMENT, f"unknown instrument {instrument!r}")
        if side not in _SIDES or not isinstance(qty, str) or not isinstance(price, str):
            raise RequestError(ErrorCode.INVALID_POSITION, "side, qty and price as text")
        try:
            amount, entry = parse_fixed(qty), parse_fixed(price)
        except ValueError:
            raise RequestError(ErrorCode.INVALID_POSITION, "qty and price are decimals") from None
        if amount <= 0 or entry <= 0:
            raise RequestError(ErrorCode.INVALID_POSITION, "qty and price are positive")
        key = (account, position_id)
        if key in self.taken:
            raise RequestError(ErrorCode.DUPLICATE_POSITION, f"id {position_id!r} is taken")
        self.taken.add(key)
        position = Position(
            id=position_id,
            account=account,
            instrument=instrument,
            side=PositionSide(side),
            qty=amount,
            entry_price=entry,
            opened_ts=time.time_ns(),
        )
        row: PositionParams = (
            position_id,
            account,
            instrument,
            side,
            format_fixed(amount),
            format_fixed(entry),
            position.opened_ts,
        )
        self._group.add(row, _Waiting(connection, request_id, position))

    def _acknowledge(self, batch: list[tuple[PositionParams, _Waiting]]) -> None:
        for _, waiting in batch:
            waiting.connection.send(
                encode_position_ack(waiting.request_id, Op.POSITION_OPEN, waiting.position)
            )


class _LeanConnection(asyncio.Protocol):
    """One client: its handshake, then its requests as they are read."""

    def __init__(self, server: LeanOrderServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._partial = b""
        """The start of a frame the last read cut short."""
        self._open = False
        self.account: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream's (uvloop's too)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def send(self, payload: bytes) -> None:
        if self._transport is not None:
            self._transport.write(text_frame(payload))

    def data_received(self, data: bytes) -> None:
        if not self._open:
            self._handshake(data)
            return
        if self._partial:
            data, self._partial = self._partial + data, b""
        start = 0
        while start < len(data):
            frame = next_text_frame(data, start, MAX_FRAME_BYTES)
            if frame is None:
                if _frame_cut_short(data, start):  # the rest comes with the next read
                    self._partial = data[start:]
                    return
                self._close()  # anything but a simple text frame: not for this server
                return
            payload, start = frame
            self._serve(payload)

    def _handshake(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self._close()
            return
        keys = [
            line[len(_KEY_HEADER) :].strip()
            for line in self._head[:end].split(b"\r\n")
            if line.lower().startswith(_KEY_HEADER)
        ]
        if len(keys) != 1 or end + 4 != len(self._head) or self._transport is None:
            self._close()
            return
        self._transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(keys[0].decode("ascii", "replace")).encode()
            + b"\r\n\r\n"
        )
        self._open = True

    def _serve(self, payload: bytes) -> None:
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.send(encode_error(ErrorCode.BAD_JSON, "not JSON"))
            return
        request_id = _request_id(request)
        try:
            if not isinstance(request, dict):
                raise RequestError(ErrorCode.BAD_REQUEST, "a request is an object")
            op = request.get("op")
            if op == Op.POSITION_OPEN:
                self._server.open(self, request_id, request.get("position"))
            elif op == "auth":
                self.account = self._server.account_of(request.get("token"))
                self.send(
                    orjson.dumps(
                        {"type": "ack", "id": request_id, "op": "auth", "account": self.account}
                    )
                )
            else:
                raise RequestError(ErrorCode.UNKNOWN_OP, f"this server serves no {op!r}")
        except RequestError as refused:
            self.send(encode_error(refused.code, refused.message, request_id))

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
