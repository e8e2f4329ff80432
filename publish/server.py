"""The subscription server: websockets on ``/ws``, HTTP GET routes on the same port.

``MarketServer`` is the only module that knows websockets' server API: it routes the
opening request (``/ws`` upgrades, anything else is answered by ``publish.http``),
creates one ``ClientSession`` per connection, and watches each connection's write
buffer through ``WatchedConnection`` to close slow consumers.

    async with MarketServer(registry, fanout, port=0, auth=policy) as server:
        print(server.url)            # ws://127.0.0.1:<port>/ws
        server.routes.add("/extra", handler)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.protocol import State

from book.registry import BookRegistry
from publish.auth import AuthPolicy
from publish.client import DEFAULT_LIMITS, ClientSession, ServerLimits
from publish.exceptions import ServerNotRunningError
from publish.fanout import Fanout
from publish.http import HttpRoutes, error_response
from publish.positions import PositionBook
from publish.protocol import ErrorCode

WS_PATH = "/ws"


class WatchedConnection(ServerConnection):
    """A ``ServerConnection`` that writes frames without awaiting (``publish.client.Sink``)
    and reports a write buffer stuck above its high-water mark.

    ``write_frames`` hands frames to the transport synchronously, like ``broadcast``
    does per connection, but with frames built once for all; ``writable`` is false
    once the transport buffer passes ``write_limit`` (asyncio paused the protocol) or the
    connection is no longer open, and the session then conflates instead of writing.

    asyncio calls ``pause_writing`` when the transport buffer crosses ``write_limit`` and
    ``resume_writing`` once it drains, so the watch is one timer per stall, nothing per
    frame. When the timer fires, ``on_stuck`` starts a graceful close; a client that
    does not read does not answer it either, so the TCP connection is aborted if it is
    still open ``close_timeout`` later.
    """

    _stuck_after = 0.0
    _on_stuck: Callable[[], None] | None = None
    _stuck_timer: asyncio.TimerHandle | None = None
    _abort_timer: asyncio.TimerHandle | None = None

    def watch_write_buffer(
        self, stuck_after: float, on_stuck: Callable[[], None], *, send_buffer: int | None
    ) -> None:
        """Call ``on_stuck`` when the write buffer stays paused ``stuck_after`` seconds;
        set the socket's ``SO_SNDBUF`` to ``send_buffer`` unless ``None``."""
        self._stuck_after = stuck_after
        self._on_stuck = on_stuck
        sock = self.transport.get_extra_info("socket")
        if send_buffer is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)

    @property
    def writable(self) -> bool:
        return (
            not self.paused
            and self.protocol.state is State.OPEN
            and not self.transport.is_closing()
        )

    def write_frames(self, frames: bytes) -> None:
        """Write websocket frames built by ``publish.protocol.text_frames``; never awaits.

        Server frames are unmasked and the server negotiates no extension (compression
        is off), so frames built once serve every connection as they are.
        """
        self.transport.write(frames)

    async def wait_writable(self) -> bool:
        if self.protocol.state is not State.OPEN:
            return False
        try:
            await self.drain()
        except Exception:  # the connection was lost; its reader reports how
            return False
        return self.writable

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._on_stuck is not None and self._stuck_timer is None:
            self._stuck_timer = self.loop.call_later(self._stuck_after, self._stuck)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stuck_timer is not None:
            self._stuck_timer.cancel()
            self._stuck_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for timer in (self._stuck_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._stuck_timer = self._abort_timer = None

    def _stuck(self) -> None:
        self._stuck_timer = None
        if self._on_stuck is not None:
            self._on_stuck()
        if self._abort_timer is None and self.close_timeout is not None:
            self._abort_timer = self.loop.call_later(self.close_timeout, self.transport.abort)


class MarketServer:
    """Websocket + HTTP server over one ``Fanout``. Start/stop, or use ``async with``."""

    def __init__(
        self,
        registry: BookRegistry,
        fanout: Fanout,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ServerLimits = DEFAULT_LIMITS,
        auth: AuthPolicy | None = None,
        positions: PositionBook | None = None,
    ) -> None:
        if fanout.registry is not registry:
            raise ValueError("the fanout must listen to the same registry")
        self._fanout = fanout
        self._host = host
        self._port = port
        self._limits = limits
        self._auth = auth
        self._positions = positions
        self._http = HttpRoutes(registry, clock=fanout.clock, max_depth=fanout.book_depth)
        self._server: Server | None = None

    @property
    def routes(self) -> HttpRoutes:
        """The HTTP route table (add routes before or after ``start``)."""
        return self._http

    @property
    def port(self) -> int:
        """The bound port (the real one when started with ``port=0``)."""
        if self._server is None:
            raise ServerNotRunningError("the server is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self.port}{WS_PATH}"

    @property
    def http_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        limits = self._limits
        self._server = await serve(
            self._serve_connection,
            self._host,
            self._port,
            process_request=self._route,
            create_connection=WatchedConnection,
            # Messages are encoded once for every client; per-connection deflate would
            # undo that and cost more CPU than the bytes it saves on market data. Without
            # it, frames are plain (WatchedConnection.write_frames relies on that).
            compression=None,
            max_size=limits.max_frame_bytes,
            write_limit=limits.write_limit,
            close_timeout=limits.close_timeout,
        )

    async def stop(self) -> None:
        """Stop listening, close every connection (1001) and wait for their sessions."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        """``/ws`` goes on to the websocket handshake (``None``); anything else is HTTP."""
        if urlsplit(request.path).path != WS_PATH:
            return self._http.respond(request.path)
        if self._fanout.counters.clients >= self._limits.max_connections:
            return error_response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the server holds its limit of {self._limits.max_connections} connections",
            )
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        assert isinstance(connection, WatchedConnection) and connection.request is not None
        query = parse_qs(urlsplit(connection.request.path).query)
        session = ClientSession(
            connection,
            self._fanout,
            limits=self._limits,
            batch=query.get("batch", ["0"])[-1] in ("1", "true"),
            auth=self._auth,
            positions=self._positions,
        )
        connection.watch_write_buffer(
            self._limits.slow_consumer_seconds,
            session.close_slow,
            send_buffer=self._limits.send_buffer_bytes,
        )
        await session.run(connection)
