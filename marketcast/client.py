"""The connection: requests and their replies, subscriptions, reconnects.

One task per client owns the websocket: it reads every frame, resolves the request a
reply answers (by ``id``) and queues market data in the ``Inbox``; when the connection
drops it yields ``Disconnected``, reconnects with a capped, jittered backoff,
re-authenticates, restores every subscription, then yields ``Reconnected`` followed by
the current state the server sends for each subscription. Requests made meanwhile wait
for the new connection; those already sent on the lost one are sent again, except
``close_position``, which is not safe to repeat and fails with ``ConnectionLostError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import count
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from marketcast.backoff import Backoff
from marketcast.exceptions import (
    ClientClosedError,
    ConnectionLostError,
    ProtocolError,
    ServerError,
)
from marketcast.inbox import Inbox
from marketcast.messages import (
    Disconnected,
    Message,
    Position,
    Reconnected,
    decode,
    decode_position,
)

log = logging.getLogger(__name__)

KEY_FIELDS = {"bbo": "instruments", "book": "instruments", "nbbo": "symbols", "profit": "account"}
"""The request field naming a keyed channel's keys (``account``: one key)."""
REPLY_TYPES = frozenset({"ack", "error", "pong"})

Subscription = tuple[str, str]
"""``(channel, key)``; the key is ``""`` for a channel-wide subscription."""

_TRANSIENT = (OSError, ConnectionClosed, InvalidHandshake, TimeoutError)
"""Connection failures worth another attempt (refused, reset, 503 at the handshake...)."""


def connect(
    url: str,
    *,
    token: str | None = None,
    batch: bool = True,
    compress: bool = False,
    backoff: Backoff | None = None,
    open_timeout: float = 10.0,
    clock: Callable[[], int] = time.time_ns,
) -> Client:
    """A client of the marketcast server at ``url`` (``ws://host:port/ws``); use it as
    ``async with marketcast.connect(url) as client:``. ``token`` (``marketcast token
    --account A``) authenticates every connection; ``batch`` asks for one frame per
    write, holding everything new (``?batch=1``: fewer frames, the same messages); ``compress`` for
    compressed frames (``?compress=1``: fewer bytes over a slow or distant link).
    Timestamps are always integer nanoseconds: a ``ts`` option on ``url`` is dropped."""
    return Client(
        url,
        token=token,
        batch=batch,
        compress=compress,
        backoff=backoff or Backoff(),
        open_timeout=open_timeout,
        clock=clock,
    )


@dataclass(slots=True, eq=False)
class _Request:
    payload: bytes
    reply: asyncio.Future[dict[str, Any]]
    repeatable: bool
    """Safe to send again on a new connection when the old one dropped before the reply."""
    sent_on: ClientConnection | None = None


@dataclass(slots=True)
class _Subscriptions:
    """What to restore on a new connection: keys per channel, in the order subscribed,
    and the depth of each ``book`` key."""

    keys: dict[Subscription, None] = field(default_factory=dict)
    depths: dict[str, int | None] = field(default_factory=dict)

    def add(self, channel: str, keys: Iterable[str], depth: int | None) -> None:
        for key in keys:
            self.keys[(channel, key)] = None
            if channel == "book":
                self.depths[key] = depth

    def remove(self, channel: str, keys: Iterable[str]) -> None:
        for key in keys:
            self.keys.pop((channel, key), None)
            if channel == "book":
                self.depths.pop(key, None)

    def requests(self) -> Iterator[dict[str, Any]]:
        """The ``subscribe`` requests restoring every subscription (one per channel, one
        per depth for ``book``)."""
        groups: dict[tuple[str, int | None], list[str]] = {}
        for channel, key in self.keys:
            depth = self.depths.get(key) if channel == "book" else None
            groups.setdefault((channel, depth), []).append(key)
        for (channel, depth), keys in groups.items():
            yield _subscription("subscribe", channel, keys, depth)


class Client:
    """A connection to a marketcast server that stays connected; see ``connect``.

    ``async for message in client`` yields the subscribed channels' messages (see
    ``marketcast.messages``) until the client is closed; a consumer that falls behind
    gets the latest message per key. It raises if the client had to stop: a token the
    server no longer accepts, a subscription it refuses on reconnect (``ServerError``),
    a frame it cannot read (``ProtocolError``).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        batch: bool,
        compress: bool,
        backoff: Backoff,
        open_timeout: float,
        clock: Callable[[], int],
    ) -> None:
        self._url = url
        self._connect_url = _with_query(url, batch=batch, compress=compress)
        self._compression: Literal["deflate"] | None = "deflate" if compress else None
        self._token = token
        self._backoff = backoff
        self._open_timeout = open_timeout
        self._clock = clock
        self._inbox = Inbox()
        self._arrived = asyncio.Event()
        self._subscriptions = _Subscriptions()
        self._requests: dict[int, _Request] = {}
        self._ids = count(1)
        self._ws: ClientConnection | None = None
        """The current connection, set once it is authenticated and resubscribed."""
        self._runner: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._account: str | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def account(self) -> str | None:
        """The account the token authenticated (``None`` without a token)."""
        return self._account

    @property
    def connected(self) -> bool:
        """True while a connection is up, authenticated and resubscribed."""
        return self._ws is not None

    async def __aenter__(self) -> Self:
        ws = await self._establish(first=True)
        self._runner = asyncio.create_task(self._run(ws), name=f"marketcast:{self._url}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; iteration ends and pending requests fail."""
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        self._fail_requests(ClientClosedError("the client is closed"))
        self._arrived.set()

    # -- messages -------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        while True:
            message = self._inbox.pop()
            if message is not None:
                return message
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()

    # -- requests -------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        instruments: Iterable[str] | None = None,
        symbols: Iterable[str] | None = None,
        account: str | None = None,
        depth: int | None = None,
    ) -> None:
        """Subscribe once the server acknowledges: ``bbo``/``book`` to ``instruments``
        (``book`` with ``depth`` levels per side), ``nbbo`` to ``symbols``, ``profit``
        to ``account`` (the token's), ``status``/``metrics`` to the whole channel. The
        current state follows. Kept across reconnects. ``ServerError`` if refused."""
        keys = _keys(channel, instruments, symbols, account)
        await self._request(_subscription("subscribe", channel, keys, depth), repeatable=True)
        self._subscriptions.add(channel, keys or [""], depth)

    async def unsubscribe(
        self,
        channel: str,
        *,
        instruments: Iterable[str] | None = None,
        symbols: Iterable[str] | None = None,
        account: str | None = None,
    ) -> None:
        """Stop a subscription (nothing more is yielded for it, not even what was queued
        on the server)."""
        keys = _keys(channel, instruments, symbols, account)
        self._subscriptions.remove(channel, keys or [""])
        await self._request(_subscription("unsubscribe", channel, keys, None), repeatable=True)

    async def open_position(
        self,
        id: str,
        *,
        instrument: str,
        side: str,
        qty: Decimal | str,
        price: Decimal | str,
    ) -> Position:
        """Register a position (``side`` ``buy`` or ``sell``); returns it as stored, once
        the server's database has committed it. Safe across reconnects: the same open
        sent again is answered with the same position. ``ServerError`` if refused
        (``duplicate_position``, ``invalid_position``, ``storage_unavailable``...)."""
        request = {
            "op": "position.open",
            "position": {
                "id": id,
                "instrument": instrument,
                "side": side,
                "qty": _decimal_text(qty),
                "price": _decimal_text(price),
            },
        }
        reply = await self._request(request, repeatable=True)
        return decode_position(_field(reply, "position"))

    async def close_position(self, id: str) -> Position:
        """Close an open position; returns it as stored, with ``closed_ts``.
        ``ServerError`` if refused, ``ConnectionLostError`` if the connection dropped
        before the reply (look at the position before trying again)."""
        reply = await self._request({"op": "position.close", "position_id": id}, repeatable=False)
        return decode_position(_field(reply, "position"))

    async def ping(self) -> None:
        """A round trip to the server (waits for a connection if there is none)."""
        await self._request({"op": "ping"}, repeatable=True)

    async def _request(self, request: dict[str, Any], *, repeatable: bool) -> dict[str, Any]:
        """Send ``request`` with a fresh id and return its reply; ``ServerError`` for an
        ``error`` reply. Sent now if connected, else as soon as the client is."""
        self._check_usable()
        request_id = next(self._ids)
        pending = _Request(
            orjson.dumps({**request, "id": request_id}),
            asyncio.get_running_loop().create_future(),
            repeatable,
        )
        self._requests[request_id] = pending
        try:
            if self._ws is not None:
                await self._send(self._ws, pending)
            return await pending.reply
        finally:
            self._requests.pop(request_id, None)

    async def _send(self, ws: ClientConnection, pending: _Request) -> None:
        pending.sent_on = ws
        # On a lost connection the runner sends it again, or fails it.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(pending.payload.decode())

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise ClientClosedError("the client is closed")

    # -- the connection ---------------------------------------------------------------

    async def _run(self, ws: ClientConnection) -> None:
        """Serve connections until closed or a failure that reconnecting cannot fix."""
        try:
            while True:
                await self._go_live(ws)
                reason = await self._read(ws)
                self._ws = None
                self._deliver(Disconnected(reason, self._clock()))
                self._fail_requests_sent_on(ws)
                ws, attempts = await self._reconnect()
                log.info("marketcast: reconnected to %s after %d attempts", self._url, attempts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the task boundary: the consumer gets it raised
            self._failure = exc
            self._ws = None
            self._fail_requests(exc)
            self._arrived.set()

    async def _go_live(self, ws: ClientConnection) -> None:
        """Make ``ws`` the connection and send it every request waiting for one."""
        self._ws = ws
        for pending in list(self._requests.values()):
            if pending.sent_on is not ws and not pending.reply.done():
                await self._send(ws, pending)

    async def _read(self, ws: ClientConnection) -> str:
        """Dispatch frames until the connection ends; why it ended."""
        try:
            async for frame in ws:
                self._dispatch(frame, self._deliver)
        except ConnectionClosed:
            pass
        close = ws.protocol.close_rcvd
        if close is None:
            return "connection lost"
        return f"closed by the server: {close.code} {close.reason}".rstrip()

    async def _reconnect(self) -> tuple[ClientConnection, int]:
        """Connect again with backoff; the connection and the attempts it took."""
        for attempts, delay in enumerate(self._backoff.delays(), start=1):
            await asyncio.sleep(delay)
            try:
                return await self._establish(first=False, attempts=attempts), attempts
            except _TRANSIENT as exc:
                log.debug("marketcast: reconnect attempt %d failed: %r", attempts, exc)
        raise AssertionError("unreachable: the backoff never ends")

    async def _establish(self, *, first: bool, attempts: int = 0) -> ClientConnection:
        """Open a connection, authenticate and restore every subscription. The current
        state sent meanwhile is yielded after ``Reconnected`` (unless ``first``)."""
        ws = await ws_connect(
            self._connect_url,
            open_timeout=self._open_timeout,
            compression=self._compression,
            max_size=None,
        )
        meanwhile: list[Message] = []
        restoring: list[tuple[int, _Request]] = []
        try:
            if self._token is not None:
                restoring.append(self._restore(ws, {"op": "auth", "token": self._token}))
            restoring += [self._restore(ws, r) for r in self._subscriptions.requests()]
            for _, pending in restoring:
                await self._send(ws, pending)
            while not all(pending.reply.done() for _, pending in restoring):
                self._dispatch(await ws.recv(), meanwhile.append)
            for request_id, pending in restoring:
                self._requests.pop(request_id, None)
                reply = pending.reply.result()  # a refusal: ServerError
                if reply.get("op") == "auth":
                    self._account = reply.get("account")
        except BaseException:
            for request_id, _ in restoring:
                self._requests.pop(request_id, None)
            await ws.close()
            raise
        if not first:
            self._deliver(Reconnected(self._url, attempts, self._clock()))
        for message in meanwhile:
            self._deliver(message)
        return ws

    def _restore(self, ws: ClientConnection, request: dict[str, Any]) -> tuple[int, _Request]:
        """A request of the reconnect itself, registered (not sent) for its reply."""
        request_id = next(self._ids)
        pending = _Request(
            orjson.dumps({**request, "id": request_id}),
            asyncio.get_running_loop().create_future(),
            repeatable=False,
            sent_on=ws,
        )
        self._requests[request_id] = pending
        return request_id, pending

    def _dispatch(self, frame: str | bytes, deliver: Callable[[Message], None]) -> None:
        """Replies resolve their request; everything else is decoded and delivered."""
        try:
            decoded = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"a frame that is not JSON: {exc}") from None
        for obj in decoded if isinstance(decoded, list) else (decoded,):
            if not isinstance(obj, dict):
                raise ProtocolError(f"a message that is not an object: {obj!r:.200}")
            if obj.get("type") in REPLY_TYPES:
                self._answer(obj)
            else:
                deliver(decode(obj))

    def _answer(self, reply: dict[str, Any]) -> None:
        request_id = reply.get("id")
        if request_id is None and reply.get("type") == "error":
            # Only a request the server did not read (rate_limited) has a null id; it
            # reads in order, so it is the oldest one still waiting for its reply.
            waiting = (key for key, pending in self._requests.items() if not pending.reply.done())
            request_id = next(waiting, None)
        pending = self._requests.get(request_id) if isinstance(request_id, int) else None
        if pending is None or pending.reply.done():
            log.warning("marketcast: a reply to no request of this client: %r", reply)
            return
        if reply["type"] == "error":
            pending.reply.set_exception(
                ServerError(str(reply.get("code")), str(reply.get("message", "")))
            )
        else:
            pending.reply.set_result(reply)

    def _deliver(self, message: Message) -> None:
        if self._inbox.put(message):
            self._arrived.set()

    def _fail_requests_sent_on(self, ws: ClientConnection) -> None:
        """Requests that went out on ``ws`` and must not go out again fail; the others
        wait for the next connection."""
        for pending in self._requests.values():
            if pending.sent_on is ws and not pending.repeatable and not pending.reply.done():
                pending.reply.set_exception(
                    ConnectionLostError("the connection dropped before the server replied")
                )

    def _fail_requests(self, error: BaseException) -> None:
        for pending in self._requests.values():
            if not pending.reply.done():
                pending.reply.set_exception(error)


def _keys(
    channel: str,
    instruments: Iterable[str] | None,
    symbols: Iterable[str] | None,
    account: str | None,
) -> list[str]:
    """The keys of a (un)subscription to ``channel``, from the one argument it takes."""
    given = {
        name: value
        for name, value in (
            ("instruments", instruments),
            ("symbols", symbols),
            ("account", account),
        )
        if value is not None
    }
    wanted = KEY_FIELDS.get(channel)
    if wanted is None and not given:
        return []
    if wanted is None or set(given) != {wanted}:
        needs = f"needs {wanted}=" if wanted else "takes no keys"
        raise TypeError(f"the {channel} channel {needs}")
    value = given[wanted]
    if isinstance(value, str):
        if wanted != "account":
            raise TypeError(f"{wanted} must be a list of strings, not a string")
        return [value]
    return list(value)


def _subscription(op: str, channel: str, keys: list[str], depth: int | None) -> dict[str, Any]:
    request: dict[str, Any] = {"op": op, "channel": channel}
    wanted = KEY_FIELDS.get(channel)
    if wanted == "account":
        request[wanted] = keys[0]
    elif wanted is not None:
        request[wanted] = keys
    if depth is not None:
        request["depth"] = depth
    return request


def _decimal_text(value: Decimal | str) -> str:
    """An amount as the exact decimal text the server wants (never a binary float)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str):
        return value
    raise TypeError(f"amounts are Decimal or decimal strings, not {type(value).__name__}")


def _field(reply: dict[str, Any], name: str) -> Any:
    value = reply.get(name)
    if value is None:
        raise ProtocolError(f"a reply without {name}: {reply!r:.200}")
    return value


def _with_query(url: str, *, batch: bool, compress: bool) -> str:
    """``url`` with this client's options: its own ``batch`` and ``compress``, and no
    ``ts`` (the client reads integer nanoseconds only)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("batch", "compress", "ts")]
    if batch:
        query.append(("batch", "1"))
    if compress:
        query.append(("compress", "1"))
    return urlunsplit(parts._replace(query=urlencode(query)))
