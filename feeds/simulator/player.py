"""Play a recording back as a venue on loopback, so the live path can be fed real traffic.

Every websocket client gets the recording's received frames, in order, as fast as it
reads them; plain HTTP GETs are answered with the recording's HTTP responses for the
same ``symbol`` query parameter, in recorded order (a refetch gets the next one; after
the last, the last again). Nothing is generated: what the venue said is what is sent.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from feeds.recordings import FrameKind, RecordedFrame


class RecordingPlayer:
    """A venue that replays ``frames`` (async context manager; ``port=0`` picks one)."""

    def __init__(
        self, frames: Sequence[RecordedFrame], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._stream = [frame.data for frame in frames if frame.kind is FrameKind.RECV]
        self._responses: dict[str, list[str]] = defaultdict(list)
        for frame in frames:
            if frame.kind is FrameKind.HTTP:
                self._responses[_symbol(frame.url)].append(frame.data)
        self._served: dict[str, int] = defaultdict(int)
        self._host = host
        self._requested_port = port
        self._server: Server | None = None
        self.frames_sent = 0
        self.finished = asyncio.Event()
        """Set when a client has been sent every recorded frame."""

    @property
    def frame_count(self) -> int:
        return len(self._stream)

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self._port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._play,
            self._host,
            self._requested_port,
            process_request=self._answer_http,
            max_size=2**16,
            compression=None,
        )
        self._port: int = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _play(self, connection: ServerConnection) -> None:
        for data in self._stream:
            await connection.send(data)
            self.frames_sent += 1
        self.finished.set()
        await connection.wait_closed()

    def _answer_http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        symbol = _symbol(request.path)
        recorded = self._responses.get(symbol)
        if not recorded:
            return connection.respond(404, "no recorded response for that symbol\n")
        index = min(self._served[symbol], len(recorded) - 1)
        self._served[symbol] += 1
        return connection.respond(200, recorded[index])


def _symbol(url: str) -> str:
    return parse_qs(urlsplit(url).query).get("symbol", [""])[0].upper()
