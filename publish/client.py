"""One subscriber connection: its requests, subscriptions, auth state and conflating outbox.

Market data reaches a session from its crowd (``publish.fanout.Crowd``: the sessions
with the same subscriptions): at the end of a publish tick ``take_tick`` writes the
crowd's frames, built once for all members, in one transport write (one frame per
message, or with ``?batch=1`` one JSON-array frame), with no await and no task switch.
Whatever cannot go out that way (the socket is behind, or replies or the state sent on
subscribe are queued first) is ``offer``ed: kept as the latest of its key in ``_outbox``
(a dict), replacing an unsent older one (conflation: seq jumps, nothing stale is ever
written), and written by ``flush`` at the end of the tick. When the socket is behind
(its transport buffer above ``write_limit``), nothing is written: the outbox keeps
conflating, and a writer task, started only then, waits for the socket to drain and
writes it. Memory per client is therefore bounded by
construction: one pending message per subscribed key, plus at most
``max_pending_replies`` replies (past that the session stops reading the client's
requests until its writer catches up).

Requests go through ``handle`` (limits, parsing) and ``serve`` (the op dispatch); their
replies are written right after each request. Every refusal is an ``error`` frame with a
stable code; each one spends the connection's error budget, and a connection past it is
closed with 4029.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Collection, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from publish.auth import AuthPolicy, Claims
from publish.exceptions import RequestError, TokenError
from publish.fanout import CHANNEL_WIDE, Fanout, TickMessages, Topic
from publish.positions import PositionBook
from publish.protocol import (
    KEY_FIELDS,
    MARKET_DATA,
    AuthRequest,
    Channel,
    CloseCode,
    ErrorCode,
    Op,
    PingRequest,
    PositionCloseRequest,
    PositionOpenRequest,
    Request,
    RequestId,
    SubscriptionRequest,
    encode_ack,
    encode_auth_ack,
    encode_batch,
    encode_error,
    encode_pong,
    encode_position_ack,
    parse_request,
    text_frames,
)
from publish.ratelimit import TokenBucket

DEFAULT_BOOK_DEPTH = 10
"""Levels per side of a ``book`` subscription that names no depth (capped by the server's)."""


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
    max_connections: int = 20_000
    """Open sessions; further websocket handshakes get HTTP 503 ``too_many_connections``.
    Lowered at start when the open-file limit cannot hold that many (``publish.server``)."""
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
            "max_connections",
            "max_pending_replies",
            "ops_burst",
            "error_burst",
            "write_limit",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
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


class Sink(Protocol):
    """Where a session writes (``publish.server.WatchedConnection`` in the server)."""

    @property
    def writable(self) -> bool:
        """Open, and its write buffer is below the high-water mark."""
        ...

    def write_frames(self, frames: bytes) -> None:
        """Send websocket frames (``publish.protocol.text_frames``) now, without waiting;
        call only while ``writable``."""
        ...

    async def wait_writable(self) -> bool:
        """Wait until ``writable`` (True) or the connection is closing or closed (False)."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class ClientSession:
    """The state of one connection. Create it, then ``await run(incoming)`` until it ends.

    ``auth`` is how tokens are checked; ``None`` accepts no token (every ``auth`` fails
    ``token_invalid``) and lets market data through.
    """

    def __init__(
        self,
        sink: Sink,
        fanout: Fanout,
        *,
        limits: ServerLimits = DEFAULT_LIMITS,
        batch: bool = False,
        auth: AuthPolicy | None = None,
        positions: PositionBook | None = None,
    ) -> None:
        self._sink = sink
        self._fanout = fanout
        self._limits = limits
        self._batch = batch
        self._auth = auth
        self._positions = positions
        self._position_ops: set[asyncio.Task[None]] = set()
        self._counters = fanout.counters
        self._ops = TokenBucket(limits.ops_per_second, limits.ops_burst)
        self._errors = TokenBucket(limits.errors_per_second, limits.error_burst)
        self._claims: Claims | None = None
        self._topics: set[Topic] = set()
        self._book_depths: dict[str, int] = {}
        self._outbox: dict[Topic, bytes] = {}
        self._replies: list[bytes] = []
        self._queued = False
        self._replies_taken = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def topics(self) -> frozenset[Topic]:
        return frozenset(self._topics)

    @property
    def account(self) -> str | None:
        """The account this connection acts for: set by a successful ``auth``, ``None``
        before it and once its token has expired."""
        claims = self._claims
        if claims is None or self._auth is None or not self._auth.tokens.is_current(claims):
            return None
        return claims.account

    def require_account(self, account: str, request_id: RequestId) -> None:
        """Refuse (``RequestError``) unless the connection acts for ``account``:
        ``auth_required`` without a current token, ``forbidden`` for another account."""
        current = self.account
        if current is None:
            raise RequestError(
                ErrorCode.AUTH_REQUIRED, "authenticate first (op auth, unexpired token)", request_id
            )
        if current != account:
            raise RequestError(
                ErrorCode.FORBIDDEN, "this connection acts for another account", request_id
            )

    # -- called by the engine -----------------------------------------------------------

    def offer(self, key: Topic, message: bytes) -> None:
        """Queue ``message`` as the latest of ``key``, replacing an unsent one; it is
        written when the tick ends (or, if the socket is behind, when it drains). O(1),
        never waits."""
        outbox = self._outbox
        if key in outbox:
            self._counters.conflated += 1
        outbox[key] = message
        if not self._queued:
            self._queued = True
            self._fanout.flush_soon(self)

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        """``offer`` each of ``messages`` in order, in one dict update. O(len(messages))."""
        outbox = self._outbox
        queued = len(outbox) + len(messages)
        outbox.update(messages)
        if len(outbox) < queued:
            self._counters.conflated += queued - len(outbox)
        if messages and not self._queued:
            self._queued = True
            self._fanout.flush_soon(self)

    def flush(self) -> None:
        """Write everything queued (replies first) if the socket takes it now; else leave
        it to the writer task. O(pending); one write."""
        if not self._queued:
            return
        sink = self._sink
        if not sink.writable:
            self._start_writer()
            return
        self._queued = False
        outbox = self._outbox
        messages: Collection[bytes]
        if self._replies:
            messages, self._replies = self._replies, []
            messages.extend(outbox.values())
            self._replies_taken.set()
        else:
            messages = outbox.values()  # written before the outbox is cleared below
        count = len(messages)
        counters = self._counters
        if self._batch:
            sink.write_frames(text_frames((encode_batch(messages),)))
            counters.frames_sent += 1
        else:
            sink.write_frames(text_frames(messages))
            counters.frames_sent += count
        counters.messages_sent += count
        outbox.clear()

    def take_tick(self, tick: TickMessages) -> None:
        """Write the frames of the crowd's tick as they are (one write), or, when this
        session is behind or has its own messages queued, take the messages into its
        outbox so that they conflate and keep their order. O(1) or O(messages)."""
        if self._queued or not self._sink.writable:
            for key, message in tick.messages.items():
                self.offer(key, message)
            return
        count = len(tick.messages)
        counters = self._counters
        if self._batch:
            self._sink.write_frames(tick.batch_frame)
            counters.frames_sent += 1
        else:
            self._sink.write_frames(tick.frames)
            counters.frames_sent += count
        counters.messages_sent += count

    # -- requests -----------------------------------------------------------------------

    def handle(self, raw: str | bytes) -> None:
        """Serve one request frame; every failure becomes an ``error`` reply. O(keys)."""
        if self._closing:
            return
        try:
            if not self._ops.take():
                self._counters.rate_limited += 1
                raise RequestError(
                    ErrorCode.RATE_LIMITED,
                    f"more than {self._limits.ops_per_second:g} requests per second",
                )
            if len(raw) > self._limits.max_request_bytes:
                raise RequestError(
                    ErrorCode.TOO_LARGE,
                    f"a request may be at most {self._limits.max_request_bytes} bytes",
                )
            self.serve(parse_request(raw))
        except RequestError as exc:
            self._refuse(exc)

    def serve(self, request: Request) -> None:
        """The op dispatch: one case per request type; ``RequestError`` refuses."""
        match request:
            case PingRequest():
                self.reply(encode_pong(request.id))
            case AuthRequest():
                self._authenticate(request)
            case SubscriptionRequest(op=Op.SUBSCRIBE):
                self._subscribe(request)
            case SubscriptionRequest():
                self._unsubscribe(request)
            case PositionOpenRequest() | PositionCloseRequest():
                self._start_position_op(request)

    def reply(self, message: bytes) -> None:
        """Queue a reply (ack, error, pong): it is written ahead of queued market data,
        after the request that caused it or at the end of the tick. O(1)."""
        self._replies.append(message)
        if not self._queued:
            self._queued = True
            self._fanout.flush_soon(self)

    def _refuse(self, exc: RequestError) -> None:
        """Answer ``exc`` with an error frame, or close the connection (4029) once it has
        used up its error budget."""
        if not self._errors.take():
            if self._close(CloseCode.TOO_MANY_ERRORS, "too many errors"):
                self._counters.error_closes += 1
            return
        self._counters.errors_sent += 1
        self.reply(encode_error(exc.code, exc.message, exc.request_id))

    def _authenticate(self, request: AuthRequest) -> None:
        if self._auth is None:
            raise RequestError(ErrorCode.TOKEN_INVALID, "this server accepts no tokens", request.id)
        try:
            claims = self._auth.tokens.verify(request.token)
        except TokenError as exc:
            self._counters.auth_failures += 1
            raise RequestError(exc.code, exc.message, request.id) from None
        if self._claims is not None and self._claims.account != claims.account:
            self._counters.auth_failures += 1
            raise RequestError(
                ErrorCode.FORBIDDEN, "this connection already acts for another account", request.id
            )
        self._claims = claims
        self.reply(encode_auth_ack(request.id, claims.account, claims.expires_ns))

    def _start_position_op(self, request: PositionOpenRequest | PositionCloseRequest) -> None:
        """Validate the caller, then serve the op in a task: its reply waits for storage."""
        if self._positions is None:
            raise RequestError(ErrorCode.UNKNOWN_OP, "this server keeps no positions", request.id)
        account = self.account
        if account is None:
            raise RequestError(
                ErrorCode.AUTH_REQUIRED, "authenticate first (op auth, unexpired token)", request.id
            )
        task = self._spawn(self._position_op(self._positions, account, request))
        self._position_ops.add(task)
        task.add_done_callback(self._position_ops.discard)

    async def _position_op(
        self,
        positions: PositionBook,
        account: str,
        request: PositionOpenRequest | PositionCloseRequest,
    ) -> None:
        try:
            if isinstance(request, PositionOpenRequest):
                op = Op.POSITION_OPEN
                row = await positions.open(
                    account,
                    position_id=request.position_id,
                    instrument=request.instrument,
                    side=request.side,
                    qty=request.qty,
                    price=request.price,
                )
            else:
                op = Op.POSITION_CLOSE
                row = await positions.close(account, request.position_id)
        except RequestError as exc:
            refusal = RequestError(exc.code, exc.message, request.id)
            if exc.code is ErrorCode.STORAGE_UNAVAILABLE:
                # The server's trouble, not the client's: it spends no error budget.
                self._counters.errors_sent += 1
                self.reply(encode_error(refusal.code, refusal.message, request.id))
            else:
                self._refuse(refusal)
            return
        self.reply(encode_position_ack(request.id, op, row))

    def _subscribe(self, request: SubscriptionRequest) -> None:
        channel = request.channel
        if channel is Channel.PROFIT:
            if not self._fanout.has_source(Channel.PROFIT):
                raise RequestError(
                    ErrorCode.UNKNOWN_CHANNEL, "this server keeps no positions", request.id
                )
            self.require_account(request.keys[0], request.id)
        if (
            channel in MARKET_DATA
            and self._auth is not None
            and self._auth.market_data_requires_auth
            and self.account is None
        ):
            raise RequestError(
                ErrorCode.AUTH_REQUIRED, "this server requires auth for market data", request.id
            )
        depth = 0
        if channel is Channel.BOOK:
            depth = self._book_depth(request)
            request = replace(request, depth=depth)
        topics = self._topics_of(request)
        held = self._topics
        if channel is Channel.BOOK:
            new = [topic for topic in topics if self._book_depths.get(topic[1]) != depth]
        else:
            new = [topic for topic in topics if topic not in held]
        added = sum(1 for topic in new if topic not in held)
        limit = self._limits.max_subscriptions
        if len(held) + added > limit:
            raise RequestError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {limit} subscriptions per connection "
                f"({len(held)} held, {added} requested)",
                request.id,
            )
        # A book held at another depth moves to the new one: nothing of the old is sent.
        self._leave([topic for topic in new if topic in held])
        # The ack goes first: replies are written before queued market data.
        self.reply(encode_ack(request))
        held.update(new)
        if channel is Channel.BOOK:
            for _, instrument in new:
                self._book_depths[instrument] = depth
        self._fanout.subscribe(self, new, depth=depth)

    def _unsubscribe(self, request: SubscriptionRequest) -> None:
        self._leave([topic for topic in self._topics_of(request) if topic in self._topics])
        self.reply(encode_ack(request))

    def _leave(self, topics: list[Topic]) -> None:
        """Unsubscribe ``topics`` (held) and drop what is queued for them. O(topics)."""
        self._topics.difference_update(topics)
        self._fanout.unsubscribe(self, topics)
        outbox = self._outbox
        for topic in topics:
            channel, key = topic
            if channel is Channel.BOOK:
                del self._book_depths[key]
            # profit frames are keyed by position (one account per connection).
            if key == CHANNEL_WIDE or channel is Channel.PROFIT:
                for pending in [pending for pending in outbox if pending[0] is channel]:
                    del outbox[pending]
            else:
                outbox.pop(topic, None)

    def _book_depth(self, request: SubscriptionRequest) -> int:
        most = self._fanout.book_depth
        depth = min(DEFAULT_BOOK_DEPTH, most) if request.depth is None else request.depth
        if not 1 <= depth <= most:
            raise RequestError(
                ErrorCode.BAD_REQUEST, f"depth must be between 1 and {most}", request.id
            )
        return depth

    def _topics_of(self, request: SubscriptionRequest) -> list[Topic]:
        """The request's topics; all-or-nothing: one unknown key fails the request."""
        channel = request.channel
        if channel is Channel.PROFIT:
            return [(channel, request.keys[0])]
        if channel not in KEY_FIELDS:
            return [(channel, CHANNEL_WIDE)]
        registry = self._fanout.registry
        if channel is Channel.NBBO:
            symbols = set(registry.symbols())
            unknown = [key for key in request.keys if key not in symbols]
            code, what = ErrorCode.UNKNOWN_SYMBOL, "symbol"
        else:
            unknown = [key for key in request.keys if registry.status(key) is None]
            code, what = ErrorCode.UNKNOWN_INSTRUMENT, "instrument"
        if unknown:
            shown = ", ".join(key[:64] for key in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise RequestError(code, f"unknown {what}(s): {shown}{more}", request.id)
        return [(channel, key) for key in request.keys]

    # -- writing --------------------------------------------------------------------------

    def _start_writer(self) -> None:
        if self._writer is None and self._tasks is not None and not self._closing:
            self._writer = self._spawn(self._write_when_drained())

    async def _write_when_drained(self) -> None:
        """The writer: while something is queued, wait for the socket, then flush."""
        try:
            while self._queued:
                if not await self._sink.wait_writable():
                    self._closing = True  # nothing more can be written: stop serving
                    self._replies_taken.set()
                    return
                self.flush()
        finally:
            self._writer = None

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, incoming: AsyncIterable[str | bytes]) -> None:
        """Read requests from ``incoming`` and write messages until the connection ends;
        then leave every subscription."""
        counters = self._counters
        counters.clients += 1
        counters.connections_total += 1
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                try:
                    await self._read_loop(incoming)
                finally:
                    self._tasks = None
                    if self._writer is not None:
                        self._writer.cancel()
                    # A position change already queued is still stored; only the wait
                    # for its acknowledgement ends with the connection.
                    for op in self._position_ops:
                        op.cancel()
        finally:
            self._fanout.unsubscribe(self, self._topics)
            self._topics.clear()
            self._book_depths.clear()
            self._outbox.clear()
            counters.clients -= 1

    def close_slow(self) -> None:
        """Close a consumer whose write buffer stayed above its limit (4008). Never blocks."""
        if self._close(CloseCode.SLOW_CONSUMER, "slow consumer"):
            self._counters.slow_closes += 1

    def _close(self, code: CloseCode, reason: str) -> bool:
        """Start closing with ``code`` unless already closing; requests are ignored from
        now on (still read, so the client's closing handshake gets through)."""
        if self._tasks is None or self._closing:
            return False
        self._closing = True
        self._replies_taken.set()
        self._spawn(self._sink.close(code, reason))
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tasks is not None
        return self._tasks.create_task(coro)

    async def _read_loop(self, incoming: AsyncIterable[str | bytes]) -> None:
        limit = self._limits.max_pending_replies
        try:
            async for raw in incoming:
                self.handle(raw)
                self.flush()
                while len(self._replies) >= limit and not self._closing:
                    self._replies_taken.clear()
                    await self._replies_taken.wait()
        except ConnectionClosed:
            return
