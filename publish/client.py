"""One subscriber connection, put together from pieces with one job each.

- ``publish.outbox.Outbox``: the conflating queue and the writer (what goes out);
- ``publish.requests.RequestHandler``: limits, parsing and the op dispatch (what comes in);
- ``publish.credentials.Credentials``: the account the connection acts for, and the
  timer of its token's expiry;
- ``publish.subscriptions.Subscriptions``: (un)subscribe validation against an injected
  ``publish.catalog.InstrumentCatalog``; what is held lives in the fan-out only;
- ``publish.position_requests.PositionRequests``: position ops.

``ClientSession`` wires them for one connection and runs it: it serves requests until the
connection ends (as the connection reads them, ``take``, or from websockets' queue in
its read loop), stops reading while replies pile up (``max_pending_replies``), and
closes the connection when a piece asks (slow consumer 4008, too many errors 4029).

When the token expires, the streams that needed it stop (``profit`` always, market data
when the server requires auth) and the client gets a ``token_expired`` error frame; an
``auth`` with a fresh token for the same account resumes them, current state first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Coroutine
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from publish.admin import AdminControl, AdminRequests
from publish.auth import AuthPolicy
from publish.catalog import InstrumentCatalog, RegistryCatalog
from publish.channels import DEFAULT_BOOK_DEPTH, Topic
from publish.credentials import Credentials
from publish.fanout import Fanout
from publish.outbox import Outbox, Sink
from publish.position_requests import OnAnswered, PositionRequests
from publish.position_service import PositionService
from publish.protocol import CloseCode, ErrorCode, encode_error
from publish.requests import RequestHandler
from publish.subscriptions import Subscriptions
from publish.wire import PLAIN, WireFormat

__all__ = [
    "DEFAULT_BOOK_DEPTH",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_CONNECTIONS",
    "ClientSession",
    "ServerLimits",
    "Sink",
]

DEFAULT_MAX_CONNECTIONS = 20_000
"""Websocket sessions served when ``[server.limits].max_connections`` is not set."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Per-server and per-connection limits (config values)."""

    max_frame_bytes: int = 1 << 20
    """Largest frame the server receives (websockets ``max_size``); a bigger one closes the
    connection (1009), since it cannot be buffered safely."""
    max_request_bytes: int = 64 << 10
    """Largest request served; a bigger one (still within ``max_frame_bytes``) gets a
    ``too_large`` error frame and the connection stays open."""
    max_subscriptions: int = 1000
    """Subscribed keys per connection (a channel-wide subscription counts one)."""
    max_connections: int | None = None
    """Open sessions; further websocket handshakes get HTTP 503 ``too_many_connections``.
    ``None`` (not configured): ``DEFAULT_MAX_CONNECTIONS``. Lowered at start when the
    open-file limit cannot hold that many (``publish.server.connection_cap``)."""
    max_connections_per_ip: int = 0
    """Open connections one client address may hold (0: no limit); further requests from
    it get HTTP 503 ``too_many_connections``."""
    max_pending_replies: int = 64
    """Replies (ack/error/pong) queued before the session stops reading requests."""
    ops_per_second: float = 100.0
    """Requests per second a connection may send on average; more get ``rate_limited``."""
    ops_burst: int = 200
    """Requests a connection may send at once (the ops token bucket's size)."""
    errors_per_second: float = 1.0
    """Error replies per second a connection may cause on average ..."""
    error_burst: int = 50
    """... and at once; past that budget the connection is closed with 4029."""
    write_limit: int = 256 << 10
    """High-water mark of a connection's transport write buffer, in bytes."""
    send_buffer_bytes: int | None = None
    """``SO_SNDBUF`` of each connection's socket; ``None`` keeps the OS default (Linux
    autotunes it up to ``net.ipv4.tcp_wmem``, megabytes). Smaller bounds kernel memory
    per client and how far behind a slow consumer can fall before it is noticed."""
    slow_consumer_seconds: float = 5.0
    """A write buffer above ``write_limit`` this long closes the connection with 4008."""
    close_timeout: float = 10.0
    """How long a closing handshake may take before the TCP connection is aborted."""

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "max_request_bytes",
            "max_subscriptions",
            "max_pending_replies",
            "ops_burst",
            "error_burst",
            "write_limit",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_connections_per_ip < 0:
            raise ValueError("max_connections_per_ip must be 0 (no limit) or more")
        if self.send_buffer_bytes is not None and self.send_buffer_bytes < 1:
            raise ValueError("send_buffer_bytes must be at least 1")
        for name in ("ops_per_second", "errors_per_second", "slow_consumer_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.close_timeout <= 0:
            raise ValueError("close_timeout must be positive")
        if self.max_request_bytes > self.max_frame_bytes:
            raise ValueError("max_request_bytes cannot exceed max_frame_bytes")


DEFAULT_LIMITS = ServerLimits()


class ClientSession:
    """The state of one connection. Create it, then ``await run(incoming)`` until it ends.

    ``wire`` is how its frames look (timestamps, batching, compression). ``auth`` is how
    tokens are checked; ``None`` accepts no token (every ``auth`` fails
    ``token_invalid``) and lets market data through. ``catalog`` (default: the fan-out's
    registry) says which instruments and symbols exist. ``admin`` carries out the admin
    ops of connections with an admin token (``None``: the server has none).
    ``positions`` keeps the positions of its position ops (``None``: the server keeps
    none), and ``position_op`` hears how long each took (``publish.position_requests``).
    """

    def __init__(
        self,
        sink: Sink,
        fanout: Fanout,
        *,
        limits: ServerLimits = DEFAULT_LIMITS,
        wire: WireFormat = PLAIN,
        auth: AuthPolicy | None = None,
        positions: PositionService | None = None,
        position_op: OnAnswered | None = None,
        catalog: InstrumentCatalog | None = None,
        admin: AdminControl | None = None,
    ) -> None:
        counters = fanout.counters
        self._sink = sink
        self._counters = counters
        self._max_pending_replies = limits.max_pending_replies
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = False
        self._holding = False
        """The read loop holds a request until the replies drop under their limit."""
        self.outbox = Outbox(sink, fanout, wire=wire)
        self.credentials = Credentials(auth, counters, on_expired=self._token_expired)
        self.subscriptions = Subscriptions(
            self.outbox,
            fanout,
            catalog if catalog is not None else RegistryCatalog(fanout.registry),
            self.credentials,
            max_subscriptions=limits.max_subscriptions,
        )
        self.position_requests = PositionRequests(
            positions,
            self.credentials,
            self.outbox,
            counters,
            refuse=lambda exc: self.requests.refuse(exc),
            on_answered=position_op,
        )
        self.requests = RequestHandler(
            outbox=self.outbox,
            credentials=self.credentials,
            subscriptions=self.subscriptions,
            positions=self.position_requests,
            admin=AdminRequests(admin, self.credentials, self.outbox, counters),
            counters=counters,
            close=self._close,
            max_request_bytes=limits.max_request_bytes,
            ops_per_second=limits.ops_per_second,
            ops_burst=limits.ops_burst,
            errors_per_second=limits.errors_per_second,
            error_burst=limits.error_burst,
        )

    @property
    def topics(self) -> frozenset[Topic]:
        return self.subscriptions.topics

    def handle(self, raw: str | bytes) -> None:
        """Serve one request frame (see ``RequestHandler.handle``)."""
        self.requests.handle(raw)

    def take(self, raw: str) -> bool:
        """Serve a request as soon as the connection reads it, outside the read loop
        (``publish.server.WatchedConnection.process_event``): True if served; False while
        it must wait its turn (the session is not running, ``max_pending_replies``
        replies are queued, or the read loop holds a request for its turn), for the read
        loop to serve it after those before it.
        """
        if self._tasks is None or self._holding or self._over_reply_limit():
            return False
        self._serve(raw)
        return True

    def _serve(self, raw: str | bytes) -> None:
        """Serve one request, then write what it queued if the socket takes it."""
        self.requests.handle(raw)
        self.outbox.flush()

    async def run(self, incoming: AsyncIterable[str | bytes]) -> None:
        """Read requests from ``incoming`` and write messages until the connection ends;
        then leave every subscription."""
        counters = self._counters
        counters.clients += 1
        counters.connections_total += 1
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self.outbox.attach(tasks)
                try:
                    await self._read_loop(incoming)
                finally:
                    self._tasks = None
                    self.outbox.attach(None)
                    self.position_requests.cancel()
        finally:
            self.credentials.close()
            self.subscriptions.leave_all()
            counters.clients -= 1

    def close_slow(self) -> None:
        """Close a consumer whose write buffer stayed above its limit (4008). Never blocks."""
        if self._close(CloseCode.SLOW_CONSUMER, "slow consumer"):
            self._counters.slow_closes += 1

    def _token_expired(self) -> None:
        """The token expired: stop what needed it and say so (one error frame)."""
        if self._closing:
            return
        suspended = self.subscriptions.suspend()
        stopped = ", ".join(
            sorted({f"{channel.value} {key}".rstrip() for channel, key, _ in suspended})
        )
        self._counters.tokens_expired += 1
        self.outbox.reply(
            encode_error(
                ErrorCode.TOKEN_EXPIRED,
                "the token has expired; send auth with a fresh token to continue"
                + (f" (stopped until then: {stopped})" if stopped else ""),
            )
        )

    def _close(self, code: CloseCode, reason: str) -> bool:
        """Start closing with ``code`` unless already closing; requests are ignored from
        now on (still read, so the client's closing handshake gets through)."""
        if self._tasks is None or self._closing:
            return False
        self._closing = True
        self.outbox.stop()
        self._spawn(self._sink.close(code, reason))
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tasks is not None
        return self._tasks.create_task(coro)

    def _over_reply_limit(self) -> bool:
        outbox = self.outbox
        return outbox.replies_pending >= self._max_pending_replies and not outbox.stopped

    async def _read_loop(self, incoming: AsyncIterable[str | bytes]) -> None:
        """Serve the requests that ``take`` left queued (all of them, for a connection
        that does not deliver to ``take``), each once the replies are under their limit:
        while they are not, nothing more is read (the queue fills, then the socket)."""
        outbox = self.outbox
        try:
            async for raw in incoming:
                if self._over_reply_limit():
                    self._holding = True
                    try:
                        while self._over_reply_limit():
                            outbox.replies_taken.clear()
                            await outbox.replies_taken.wait()
                    finally:
                        self._holding = False
                self._serve(raw)
        except ConnectionClosed:
            return
