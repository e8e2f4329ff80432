"""One subscriber connection: its requests, its subscriptions, its conflating outbox, its writer.

The engine (``publish.fanout``) offers already-encoded messages; ``offer`` stores each
as the latest of its key in ``_outbox`` (a dict), replacing an unsent older one
(conflation: seq jumps, nothing stale is ever written). Memory per client is therefore
bounded by construction: one pending message per subscribed key, plus at most
``max_pending_replies`` replies (past that the session stops reading the client's
requests until its writer catches up). One writer task per session takes the whole
outbox each time it wakes and writes it: one message per frame, or with ``?batch=1``
one JSON-array frame. Only the writer ever awaits the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Protocol

from websockets.exceptions import ConnectionClosed

from publish.exceptions import RequestError
from publish.fanout import CHANNEL_WIDE, Fanout, Topic
from publish.protocol import (
    KEY_FIELDS,
    CloseCode,
    ErrorCode,
    Op,
    PingRequest,
    SubscriptionRequest,
    encode_ack,
    encode_batch,
    encode_error,
    encode_pong,
    parse_request,
)


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
    """Open sessions; further websocket handshakes get HTTP 503 ``too_many_connections``."""
    max_pending_replies: int = 64
    """Replies (ack/error/pong) queued before the session stops reading requests."""
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
            "write_limit",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.send_buffer_bytes is not None and self.send_buffer_bytes < 1:
            raise ValueError("send_buffer_bytes must be at least 1")
        if self.slow_consumer_seconds <= 0 or self.close_timeout <= 0:
            raise ValueError("slow_consumer_seconds and close_timeout must be positive")
        if self.max_request_bytes > self.max_frame_bytes:
            raise ValueError("max_request_bytes cannot exceed max_frame_bytes")


DEFAULT_LIMITS = ServerLimits()


class Sink(Protocol):
    """Where a session writes (a websockets ``ServerConnection`` in the server)."""

    async def send(self, message: bytes, *, text: bool | None = None) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class ClientSession:
    """The state of one connection. Create it, then ``await run(incoming)`` until it ends."""

    def __init__(
        self,
        sink: Sink,
        fanout: Fanout,
        *,
        limits: ServerLimits = DEFAULT_LIMITS,
        batch: bool = False,
    ) -> None:
        self._sink = sink
        self._fanout = fanout
        self._limits = limits
        self._batch = batch
        self._counters = fanout.counters
        self._topics: set[Topic] = set()
        self._outbox: dict[Topic, bytes] = {}
        self._replies: list[bytes] = []
        self._wake = asyncio.Event()
        self._replies_taken = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = False

    @property
    def topics(self) -> frozenset[Topic]:
        return frozenset(self._topics)

    # -- called by the engine -----------------------------------------------------------

    def offer(self, key: Topic, message: bytes) -> None:
        """Queue ``message`` as the latest of ``key``, replacing an unsent one. O(1)."""
        outbox = self._outbox
        if key in outbox:
            self._counters.conflated += 1
        outbox[key] = message
        self._wake.set()

    # -- requests -----------------------------------------------------------------------

    def handle(self, raw: str | bytes) -> None:
        """Serve one request frame; every failure becomes an ``error`` reply. O(keys)."""
        try:
            if len(raw) > self._limits.max_request_bytes:
                raise RequestError(
                    ErrorCode.TOO_LARGE,
                    f"a request may be at most {self._limits.max_request_bytes} bytes",
                )
            request = parse_request(raw)
            if isinstance(request, PingRequest):
                self._reply(encode_pong(request.id))
            elif request.op is Op.SUBSCRIBE:
                self._subscribe(request)
            else:
                self._unsubscribe(request)
        except RequestError as exc:
            self._counters.errors_sent += 1
            self._reply(encode_error(exc.code, exc.message, exc.request_id))

    def _subscribe(self, request: SubscriptionRequest) -> None:
        topics = self._topics_of(request)
        new = [topic for topic in topics if topic not in self._topics]
        limit = self._limits.max_subscriptions
        if len(self._topics) + len(new) > limit:
            raise RequestError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {limit} subscriptions per connection "
                f"({len(self._topics)} held, {len(new)} requested)",
                request.id,
            )
        # The ack goes first: the writer sends replies before the outbox.
        self._reply(encode_ack(request))
        self._topics.update(new)
        self._fanout.subscribe(self, new)

    def _unsubscribe(self, request: SubscriptionRequest) -> None:
        held = [topic for topic in self._topics_of(request) if topic in self._topics]
        self._topics.difference_update(held)
        self._fanout.unsubscribe(self, held)
        outbox = self._outbox
        for topic in held:
            channel, key = topic
            if key == CHANNEL_WIDE:
                for pending in [pending for pending in outbox if pending[0] is channel]:
                    del outbox[pending]
            else:
                outbox.pop(topic, None)
        self._reply(encode_ack(request))

    def _topics_of(self, request: SubscriptionRequest) -> list[Topic]:
        """The request's topics; all-or-nothing: one unknown instrument fails the request."""
        if request.channel not in KEY_FIELDS:
            return [(request.channel, CHANNEL_WIDE)]
        registry = self._fanout.registry
        unknown = [key for key in request.keys if registry.status(key) is None]
        if unknown:
            raise RequestError(
                ErrorCode.UNKNOWN_INSTRUMENT,
                f"unknown instrument(s): {', '.join(unknown)}",
                request.id,
            )
        return [(request.channel, key) for key in request.keys]

    def _reply(self, message: bytes) -> None:
        self._replies.append(message)
        self._wake.set()

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
                writer = tasks.create_task(self._write_loop())
                try:
                    await self._read_loop(incoming)
                finally:
                    self._tasks = None
                    writer.cancel()
        finally:
            self._fanout.unsubscribe(self, self._topics)
            self._topics.clear()
            counters.clients -= 1

    def close_slow(self) -> None:
        """Close a consumer whose write buffer stayed above its limit (4008). Never blocks."""
        if self._tasks is None or self._closing:
            return
        self._closing = True
        self._counters.slow_closes += 1
        self._tasks.create_task(self._sink.close(CloseCode.SLOW_CONSUMER, "slow consumer"))

    async def _read_loop(self, incoming: AsyncIterable[str | bytes]) -> None:
        limit = self._limits.max_pending_replies
        try:
            async for raw in incoming:
                self.handle(raw)
                while len(self._replies) >= limit:
                    self._replies_taken.clear()
                    await self._replies_taken.wait()
        except ConnectionClosed:
            return

    async def _write_loop(self) -> None:
        sink, wake, counters = self._sink, self._wake, self._counters
        try:
            while True:
                await wake.wait()
                wake.clear()
                messages = self._take()
                if not messages:
                    continue
                if self._batch:
                    await sink.send(encode_batch(messages), text=True)
                    counters.frames_sent += 1
                else:
                    for message in messages:
                        await sink.send(message, text=True)
                        counters.frames_sent += 1
                counters.messages_sent += len(messages)
        except ConnectionClosed:
            return

    def _take(self) -> list[bytes]:
        """Everything pending, replies first, and empty queues behind it. O(pending)."""
        messages, self._replies = self._replies, []
        self._replies_taken.set()
        outbox, self._outbox = self._outbox, {}
        messages.extend(outbox.values())
        return messages
