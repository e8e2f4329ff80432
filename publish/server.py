"""The subscription server: websockets on ``/ws``, HTTP routes on the same port.

``MarketServer`` is the only module that knows websockets' server API. Each connection
reads its request head first (``WatchedConnection.data_received``): ``GET /ws`` goes on
to websockets' handshake, anything else is answered by ``publish.http`` and the
connection closed — one answer per connection (``Connection: close``), so a pipelined
request, a request body or a malformed head can never reach websockets' parser. It
creates one ``ClientSession`` per websocket and watches each connection's write buffer
to close slow consumers.

Connections are capped so that file descriptors never run out (``ConnectionGate``):
websocket sessions at ``min(max_connections, open-file limit - reserved_fds)`` (further
handshakes get 503 ``too_many_connections``), TCP connections at that plus
``HTTP_HEADROOM`` (further ones are closed at once), and optionally per client address
(``max_connections_per_ip``: further requests get 503 ``too_many_connections``). The
reserve keeps descriptors for storage, feeds, the bus and HTTP whatever clients do.

    async with MarketServer(registry, fanout, port=0, auth=policy) as server:
        print(server.url)            # ws://127.0.0.1:<port>/ws
        server.routes.add("/extra", handler)
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import CloseCode as WebsocketCloseCode
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, State

from book.registry import BookRegistry
from publish.admin import AdminControl
from publish.auth import AuthPolicy
from publish.client import DEFAULT_LIMITS, DEFAULT_MAX_CONNECTIONS, ClientSession, ServerLimits
from publish.clientframes import between_frames, next_text_frame
from publish.exceptions import ServerNotRunningError, ServerStartError
from publish.fanout import Fanout
from publish.http import (
    MAX_HEAD_BYTES,
    HttpRoutes,
    RequestHead,
    StreamedResponse,
    error_response,
    head_end,
    head_too_large,
    method_not_allowed,
    parse_head,
    write_streamed,
)
from publish.logthrottle import throttle_websockets_logs
from publish.position_requests import OnAnswered
from publish.position_service import PositionService
from publish.protocol import ErrorCode
from publish.sendnow import send_now, socket_fd
from publish.wire import WireRequest, deflate_offer

log = logging.getLogger(__name__)

WS_PATH = "/ws"

HEAD_TIMEOUT = 10.0
"""Seconds a new connection has to send its whole request head (websockets' default)."""
RESERVED_FDS_BASE = 128
"""Descriptors kept for the process itself whatever clients do: the interpreter and its
logs, storage (SQLite's database, WAL and shared-memory files per connection, or a
PostgreSQL pool), the bus (NATS) and the listening sockets."""
HTTP_HEADROOM = 64
"""TCP connections allowed beyond the websocket cap, so /health, /metrics and refused
handshakes are still answered when websocket sessions are at their cap."""
FDS_PER_FEED_CONNECTION = 4
"""A feed connection's websocket and REST sockets, and a local simulator's ends of both."""


def reserved_fds(feed_connections: int = 0) -> int:
    """Descriptors the connection caps leave unused, for a process with that many feed
    connections (the reserve of ``MarketServer``)."""
    return RESERVED_FDS_BASE + HTTP_HEADROOM + FDS_PER_FEED_CONNECTION * feed_connections


def open_files_limit() -> int | None:
    """The soft RLIMIT_NOFILE (``None`` when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True, slots=True)
class ConnectionCap:
    """How many websocket sessions a server serves, and what to tell the operator."""

    sessions: int
    level: int
    """``logging.WARNING`` when a configured ``max_connections`` cannot be honoured, or
    the open-file limit itself is below the default; ``logging.INFO`` otherwise (the
    default lowered only by the reserve is how the default works, not a problem)."""
    message: str


def connection_cap(configured: int | None, open_files: int | None, reserved: int) -> ConnectionCap:
    """The session cap for ``[server.limits].max_connections`` (``None``: not set) under
    the soft open-file limit ``open_files`` (``None``: unlimited), ``reserved``
    descriptors kept for storage, feeds, bus and HTTP. ``ServerStartError`` when the
    limit leaves no descriptor for connections."""
    wanted = DEFAULT_MAX_CONNECTIONS if configured is None else configured
    if open_files is None:
        return ConnectionCap(wanted, logging.INFO, f"serving at most {wanted} connections")
    cap = min(wanted, open_files - reserved)
    if cap < 1:
        raise ServerStartError(
            f"the open-file limit {open_files} leaves no descriptor for connections after "
            f"the {reserved} reserved for storage, feeds, bus and HTTP; raise it (ulimit -n)"
        )
    if cap == wanted:
        message = (
            f"serving at most {cap} connections (open-file limit {open_files}, {reserved} reserved)"
        )
        return ConnectionCap(cap, logging.INFO, message)
    if configured is None and open_files >= wanted:
        message = (
            f"serving at most {cap} connections: the default max_connections {wanted} less "
            f"the {reserved} descriptors reserved for storage, feeds, bus and HTTP "
            f"(open-file limit {open_files})"
        )
        return ConnectionCap(cap, logging.INFO, message)
    message = (
        f"serving at most {cap} connections, not [server.limits].max_connections {wanted}: "
        f"the open-file limit is {open_files} and {reserved} descriptors are reserved for "
        "storage, feeds, bus and HTTP"
    )
    return ConnectionCap(cap, logging.WARNING, message)


class ConnectionGate:
    """Counts open TCP connections in total and per client address, and says which to
    refuse. O(1) per connection."""

    def __init__(self, *, session_cap: int, max_per_ip: int) -> None:
        self.session_cap = session_cap
        self.tcp_cap = session_cap + HTTP_HEADROOM
        self.max_per_ip = max_per_ip
        self.total = 0
        self.refused = 0
        self._per_ip: Counter[str] = Counter()

    def opened(self, address: str) -> bool:
        """Count a new connection; False when it is past the TCP cap (close it now)."""
        self.total += 1
        self._per_ip[address] += 1
        if self.total > self.tcp_cap:
            self.refused += 1
            return False
        return True

    def closed(self, address: str) -> None:
        self.total -= 1
        left = self._per_ip[address] - 1
        if left > 0:
            self._per_ip[address] = left
        else:
            del self._per_ip[address]

    def over_ip_limit(self, address: str) -> bool:
        """True when ``address`` holds more connections than ``max_per_ip`` (0: no limit)."""
        return 0 < self.max_per_ip < self._per_ip[address]

    def health(self, sessions: int) -> tuple[bool, dict[str, object]]:
        return True, {
            "websocket_sessions": sessions,
            "tcp_open": self.total,
            "session_cap": self.session_cap,
            "tcp_cap": self.tcp_cap,
            "max_per_ip": self.max_per_ip,
            "refused_at_tcp_cap": self.refused,
            "open_files_limit": open_files_limit(),
        }


class _Front(Enum):
    READING_HEAD = 1
    WEBSOCKET = 2
    ANSWERED = 3


class WatchedConnection(ServerConnection):
    """A ``ServerConnection`` that writes frames without awaiting (``publish.client.Sink``)
    and reports a write buffer stuck above its high-water mark.

    ``write_frames`` sends frames synchronously, like ``broadcast`` does per connection,
    but with frames built once for all and into the socket at once (``publish.sendnow``);
    ``writable`` is false once the transport buffer passes ``write_limit`` (asyncio paused
    the protocol) or the connection is no longer open, and the session then conflates
    instead of writing.

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
    # Set on the per-server subclass (MarketServer._connection_class).
    http: HttpRoutes
    gate: ConnectionGate
    streams: set[asyncio.Task[None]]
    """Streamed HTTP answers being written (``MarketServer.stop`` cancels them)."""
    serves_websockets = True
    """False: HTTP only, ``/ws`` is a route like any other (none: 404)."""
    # The request head, read before websockets sees any byte.
    _front = _Front.READING_HEAD
    _head = b""
    _address = ""
    _counted = False
    _head_timer: asyncio.TimerHandle | None = None
    _fd = -1
    """The socket ``write_frames`` sends to at once (``publish.sendnow``); -1: none."""
    deliver: Callable[[str], bool] | None = None
    """Serves a request the moment it is read (``ClientSession.take``): True if it did,
    False when the request must wait its turn in websockets' queue (``process_event``)."""
    _parser_idle = False
    """websockets' parser was found between frames with nothing in its queue, and has been
    fed no byte since (reads served straight from the bytes do not feed it): it still is,
    without another look at its internals. Cleared whenever it is fed."""
    _max_frame_size: int | None = None
    """websockets' limit on a frame's payload, read with the parser's state."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._fd = socket_fd(transport)
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self._counted = True
        if not self.gate.opened(self._address):
            self._front = _Front.ANSWERED
            self.transport.abort()
            return
        # websockets' own open_timeout is off (it would also cut a streamed answer), so
        # the head has its deadline here.
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    def process_event(self, event: Event) -> None:
        """Hand a whole text message to ``deliver`` in this callback, instead of queueing
        it for the session's read loop (a task woken on the loop's next iteration), when
        nothing waits in that queue before it (a whole text frame cannot come while a
        fragmented message is incomplete: websockets' protocol refuses it before this).
        Anything else takes websockets' own way, in order: fragments, binary messages, a
        message behind queued ones or that ``deliver`` leaves for later, and invalid
        UTF-8, on which the read loop's ``recv`` closes the connection (1007) as before.
        O(1) + ``deliver``."""
        if (
            self.deliver is not None
            and isinstance(event, Frame)
            and event.opcode is Opcode.TEXT
            and event.fin
            and not _queued_frames(self.recv_messages)
            and self._hand_over(event.data)
        ):
            return
        super().process_event(event)

    def _serve_whole_frames(self, data: bytes) -> bytes:
        """Serve the whole simple text frames at the start of ``data`` (``publish.
        clientframes``) without websockets' parser, while it stands between frames and
        nothing waits in its queue (looked at once, then known until the parser is fed
        again: ``_parser_idle``); what is left, from the first frame that is not one or
        that ``deliver`` leaves for later, is websockets' to parse. O(len(data))."""
        protocol = self.protocol
        if not self._parser_idle:
            if _queued_frames(self.recv_messages) or not between_frames(protocol):
                return data
            self._parser_idle = True
            limits = [
                limit
                for limit in (protocol.max_message_size, protocol.max_fragment_size)
                if limit is not None
            ]
            self._max_frame_size = min(limits) if limits else None  # as websockets' parser
        elif protocol.state is not State.OPEN:  # closing: every byte is websockets' now
            return data
        max_size = self._max_frame_size
        start = 0
        end_of_data = len(data)
        while start < end_of_data and (frame := next_text_frame(data, start, max_size)):
            payload, end = frame
            if not self._hand_over(payload):
                break
            if self.deliver is None:  # serving it failed the connection: the rest is moot
                return b""
            start = end
        return data[start:] if start else data

    def _hand_over(self, payload: bytes | bytearray | memoryview) -> bool:
        """Serve one whole text message with ``deliver``: False when it must take
        websockets' way instead (invalid UTF-8, or ``deliver`` leaves it for later). A
        bug raised while serving fails this connection (1011, logged; ``deliver`` is
        dropped) and counts as taken."""
        assert self.deliver is not None
        try:
            text = str(payload, "utf-8")
        except UnicodeDecodeError:
            return False
        try:
            return self.deliver(text)
        except Exception:  # a bug must not reach the transport's callback
            log.exception("serving a request failed; closing the connection")
            self.deliver = None
            self.protocol.fail(WebsocketCloseCode.INTERNAL_ERROR)
            self.send_data()
            return True

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._front is _Front.READING_HEAD:
            self._front = _Front.ANSWERED
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        """Read the request head; hand ``GET /ws`` to websockets, answer anything else.
        On a websocket, whole simple text frames are served straight from the bytes
        (``_serve_whole_frames``); the rest goes to websockets' parser."""
        if self._front is _Front.WEBSOCKET:
            if self.deliver is not None:
                data = self._serve_whole_frames(data)
                if not data:
                    return
            self._parser_idle = False
            super().data_received(data)
            return
        if self._front is _Front.ANSWERED:
            return  # what follows an answered request (a body, a pipelined request)
        self._head += data
        end = head_end(self._head)
        if end < 0 and len(self._head) <= MAX_HEAD_BYTES:
            return
        head = head_too_large() if not 0 <= end <= MAX_HEAD_BYTES else parse_head(self._head[:end])
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if isinstance(head, Response):
            self._answer(head)
        elif self.gate.over_ip_limit(self._address):
            self._answer(
                error_response(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"this address holds its limit of {self.gate.max_per_ip} connections",
                )
            )
        elif urlsplit(head.target).path != WS_PATH or not self.serves_websockets:
            self._answer(self.http.respond(head.target, head.headers, method=head.method))
        elif (refusal := _websocket_refusal(head)) is not None:
            self._answer(refusal)
        else:
            self._front = _Front.WEBSOCKET
            buffered, self._head = self._head, b""
            super().data_received(buffered)

    def _answer(self, response: Response | StreamedResponse) -> None:
        """Write ``response`` and close the connection (it says ``Connection: close``); a
        streamed one is written by a task of its own, then the connection closed."""
        self._front = _Front.ANSWERED
        self._head = b""
        if isinstance(response, StreamedResponse):
            task = self.loop.create_task(self._stream(response))
            self.streams.add(task)
            task.add_done_callback(self.streams.discard)
            return
        self.transport.write(response.serialize())
        self.transport.close()

    async def _stream(self, response: StreamedResponse) -> None:
        transport = self.transport
        try:
            complete = await write_streamed(
                response, transport.write, self.drain, transport.is_closing
            )
        except BaseException:
            transport.abort()
            raise
        if complete:
            transport.close()
        else:
            transport.abort()  # no last chunk: the client sees an incomplete response

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
        """Write websocket frames built by ``publish.wire.Framing``; never awaits.

        Server frames are unmasked, and compressed ones (``?compress=1``) carry no
        context from one message to the next, so frames built once serve every
        connection of the same wire format as they are. They go into the socket now
        when the transport holds nothing unsent (``publish.sendnow``), not at the end
        of the loop's turn.
        """
        send_now(self.transport, self._fd, frames)

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
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._counted:
            self._counted = False
            self.gate.closed(self._address)
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


def _queued_frames(assembler: object) -> int:
    """Frames waiting in websockets' receive queue (``Assembler.frames``); 1 when this
    websockets keeps them elsewhere, so that messages always take its way."""
    frames = getattr(assembler, "frames", None)
    try:
        return len(frames)  # type: ignore[arg-type]
    except TypeError:
        return 1


def _websocket_refusal(head: RequestHead) -> Response | None:
    """Why a request for ``/ws`` cannot be a websocket handshake, if it cannot."""
    if head.method != "GET":
        return method_not_allowed(head.method)
    if "Transfer-Encoding" in head.headers or head.headers.get("Content-Length", "0") != "0":
        return error_response(
            HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, "a handshake request has no body"
        )
    return None


class MarketServer:
    """Websocket + HTTP server over one ``Fanout``. Start/stop, or use ``async with``.

    ``reserved_fds`` (see ``reserved_fds()``) is what the connection caps leave of the
    open-file limit, read at ``start``. ``positions`` and ``position_op`` go to every
    session (``ClientSession``)."""

    def __init__(
        self,
        registry: BookRegistry,
        fanout: Fanout,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ServerLimits = DEFAULT_LIMITS,
        auth: AuthPolicy | None = None,
        positions: PositionService | None = None,
        position_op: OnAnswered | None = None,
        reserved_fds: int = reserved_fds(),
        reuse_port: bool = False,
        admin: AdminControl | None = None,
        websockets: bool = True,
    ) -> None:
        """``reuse_port``: bind with SO_REUSEPORT, so several edge processes share the
        port and the kernel spreads connections over them. ``websockets=False``: HTTP
        routes only (a positions shard: /health, /metrics), ``/ws`` answers 404."""
        if fanout.registry is not registry:
            raise ValueError("the fanout must listen to the same registry")
        self._fanout = fanout
        self._host = host
        self._port = port
        self._limits = limits
        self._auth = auth
        self._positions = positions
        self._position_op = position_op
        self._admin = admin
        self._reserved_fds = reserved_fds
        self._reuse_port = reuse_port
        self._websockets = websockets
        self._http = HttpRoutes(
            registry, clock=fanout.clock, max_depth=fanout.book_depth, auth=auth
        )
        self._gate: ConnectionGate | None = None
        self._server: Server | None = None
        self._streams: set[asyncio.Task[None]] = set()

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

    @property
    def session_cap(self) -> int:
        """Websocket sessions this server accepts at most (set by ``start``)."""
        if self._gate is None:
            raise ServerNotRunningError("the server is not running")
        return self._gate.session_cap

    def _connection_cap(self) -> int:
        cap = connection_cap(self._limits.max_connections, open_files_limit(), self._reserved_fds)
        log.log(cap.level, "%s", cap.message)
        return cap.sessions

    def _connection_class(self, gate: ConnectionGate) -> type[WatchedConnection]:
        routes = self._http

        class Connection(WatchedConnection):
            http = routes

        Connection.gate = gate
        Connection.streams = self._streams
        Connection.serves_websockets = self._websockets
        return Connection

    async def start(self) -> None:
        limits = self._limits
        gate = ConnectionGate(
            session_cap=self._connection_cap(), max_per_ip=limits.max_connections_per_ip
        )
        self._gate = gate
        self._http.add_health_check(
            "connections", lambda: gate.health(self._fanout.counters.clients)
        )
        throttle_websockets_logs()
        self._server = await serve(
            self._serve_connection,
            self._host,
            self._port,
            process_request=self._route,
            create_connection=self._connection_class(gate),
            # Messages are encoded once for every client; per-connection deflate would
            # undo that. Only a ?compress=1 handshake offers deflate, without context
            # takeover, so that each frame is compressed once for all (publish.wire).
            compression=None,
            # The connection reads the request head under its own deadline (HEAD_TIMEOUT);
            # websockets' would also end streamed HTTP answers (history) after it.
            open_timeout=None,
            max_size=limits.max_frame_bytes,
            write_limit=limits.write_limit,
            close_timeout=limits.close_timeout,
            reuse_port=self._reuse_port or None,
        )

    async def stop(self) -> None:
        """Stop listening, close every connection (1001) and wait for their sessions."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for stream in list(self._streams):
                stream.cancel()
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
        """A ``/ws`` handshake (the only request websockets sees) goes on (``None``) unless
        the sessions are at their cap."""
        cap = self.session_cap
        if self._fanout.counters.clients >= cap:
            return error_response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the server holds its limit of {cap} connections",
            )
        try:
            wire = WireRequest.from_query(urlsplit(request.path).query)
        except ValueError as exc:
            return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, str(exc))
        if wire.compress:
            connection.protocol.available_extensions = deflate_offer()
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        assert isinstance(connection, WatchedConnection) and connection.request is not None
        wire = WireRequest.from_query(urlsplit(connection.request.path).query)
        session = ClientSession(
            connection,
            self._fanout,
            limits=self._limits,
            wire=wire.format(connection.protocol.extensions),
            auth=self._auth,
            positions=self._positions,
            position_op=self._position_op,
            admin=self._admin,
        )
        connection.watch_write_buffer(
            self._limits.slow_consumer_seconds,
            session.close_slow,
            send_buffer=self._limits.send_buffer_bytes,
        )
        connection.deliver = session.take
        try:
            await session.run(connection)
        finally:
            connection.deliver = None
