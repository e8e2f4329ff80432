"""A fake Binance spot exchange on loopback, speaking Binance's public market-data protocol.

One ``websockets`` server on one port serves what ``stream.binance.com`` and
``api.binance.com`` serve to a depth feed handler, so the real handler connects to it
exactly as to Binance:

- ``/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker`` (combined; frames are
  ``{"stream":"btcusdt@depth@100ms","data":{...}}``) and ``/ws/<stream>`` or ``/ws``
  (raw; bare data frames), with the control messages ``SUBSCRIBE``, ``UNSUBSCRIBE``,
  ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY``/``GET_PROPERTY`` ``combined``.
- ``<sym>@depth@100ms`` / ``<sym>@depth`` (pushed every 100 ms / 1000 ms, the changes
  of that interval coalesced, only when something changed)::

    {"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,"u":50093239207,
     "b":[["55653.87000000","0.00000000"]],"a":[["61838.04000000","0.32332000"]]}

- ``<sym>@bookTicker``, real time: after every market step that changes the best bid
  or ask, ``u`` being the book's update id after that step (so it usually arrives
  before the depth message covering ``u``, as on Binance)::

    {"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000",
     "a":"61837.64000000","A":"1.54698000"}

- ``GET /api/v3/depth?symbol=BTCUSDT&limit=N`` on the same port:
  ``{"lastUpdateId":..,"bids":[[px,qty],..],"asks":[..]}`` at the *current* update id
  (which may fall inside the ``U..u`` span of a depth message not yet pushed), so a
  handler must buffer and bridge exactly as on Binance. Unknown symbol: HTTP 400
  ``{"code":-1121,"msg":"Invalid symbol."}``.

Stream names are case-sensitive (lowercase symbol); a stream the simulator does not
produce is accepted and stays silent, as on Binance. Every client of a stream gets
the same bytes (``websockets.broadcast``: no per-client backpressure). Faults
(``drop_next``, ``disconnect_all``, ``go_silent``, ``send_malformed``,
``send_server_shutdown``) are counted in ``faults``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from book.fixed import format_fixed_places
from book.snapshot import Level
from feeds.simulator.market import DepthSnapshot, DiffWindow, SimSymbol, SimulatedBook

DEFAULT_SYMBOLS: tuple[SimSymbol, ...] = (
    SimSymbol(
        "BTCUSDT", price="61800.00", tick="0.01", lot="0.00001", mean_qty="0.25", max_gap_ticks=40
    ),
    SimSymbol("ETHUSDT", price="2600.00", tick="0.01", lot="0.0001", mean_qty="3", max_gap_ticks=8),
    SimSymbol("SOLUSDT", price="145.00", tick="0.01", lot="0.001", mean_qty="40", max_gap_ticks=2),
)
"""BTC/ETH/SOL against USDT with Binance's tick and lot sizes."""

DEPTH_STREAMS: Mapping[str, float] = {"depth": 1.0, "depth@100ms": 0.1}
"""Diff-depth stream suffix -> push interval in seconds."""

MAX_UPDATES_PER_SECOND = 10_000.0
_MAX_STEPS_PER_WAKE = 100
"""A market loop that fell behind catches up at most this many steps, then skips."""
_REST_DEFAULT_LIMIT = 100
_REST_MAX_LIMIT = 5000
_JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
_MALFORMED_FRAME = b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":17'
"""A frame cut short: what a client sees if the venue sends garbage."""


class Fault(StrEnum):
    """Faults a running simulator can inject (``inject``), named for CLI flags."""

    DROP = "drop"
    DISCONNECT = "disconnect"
    SILENCE = "silence"
    MALFORMED = "malformed"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class FaultCounters:
    """What was injected so far.

    ``dropped_depth``: depth messages withheld by ``drop_next``; ``disconnected``:
    connections aborted by ``disconnect_all``; ``silences``: ``go_silent`` calls;
    ``malformed``/``shutdown_notices``: frames sent, one per connected client.
    """

    dropped_depth: int = 0
    disconnected: int = 0
    silences: int = 0
    malformed: int = 0
    shutdown_notices: int = 0


@dataclass(eq=False, slots=True)
class _Client:
    connection: ServerConnection
    combined: bool
    streams: list[str] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _SymbolFeed:
    book: SimulatedBook
    prefix: str
    """Lowercase symbol, the stream-name prefix."""
    windows: dict[str, DiffWindow]
    """Depth stream suffix -> changes not pushed yet."""
    drops_pending: int = 0
    snapshots_served: int = 0
    muted_until: float = 0.0


class BinanceSpotSimulator:
    """A Binance spot market-data venue on loopback (async context manager).

    ``updates_per_second`` market steps per symbol (each one or more level changes)
    run on an owned task until exit; ``pause``/``resume`` stop and restart the market.
    ``levels`` levels per side; ``port=0`` picks a free port (see ``ws_url``,
    ``rest_url``). ``clock_ns`` stamps ``E`` (ms). Each push costs one JSON encode per
    stream plus O(clients) buffer appends.
    """

    def __init__(
        self,
        *,
        symbols: Sequence[SimSymbol] = DEFAULT_SYMBOLS,
        updates_per_second: float = 100.0,
        seed: int = 0,
        levels: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if not 0 < updates_per_second <= MAX_UPDATES_PER_SECOND:
            raise ValueError(f"updates_per_second must be in (0, {MAX_UPDATES_PER_SECOND}]")
        if not symbols or len({spec.symbol for spec in symbols}) != len(symbols):
            raise ValueError("symbols must be non-empty and distinct")
        self._period = 1.0 / updates_per_second
        self._host = host
        self._requested_port = port
        self._clock_ns = clock_ns
        self._feeds = {
            spec.symbol: _SymbolFeed(
                SimulatedBook(spec, levels=levels, seed=seed),
                spec.symbol.lower(),
                {suffix: DiffWindow() for suffix in DEPTH_STREAMS},
            )
            for spec in symbols
        }
        self._clients: set[_Client] = set()
        self._subscribers: dict[str, set[_Client]] = {}
        self._running = asyncio.Event()
        self._running.set()
        self._silent_until = 0.0
        self._faults = FaultCounters()
        self._connections_accepted = 0
        self._server: Server | None = None
        self._port = 0
        self._runner: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._serve_client,
            self._host,
            self._requested_port,
            process_request=self._process_request,
            ping_interval=20,
            ping_timeout=60,
            max_size=2**16,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._runner = asyncio.create_task(self._run(), name="binance-simulator")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._runner is not None:
                self._runner.cancel()
                try:
                    await self._runner
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
        finally:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._periodic(self._period, self._step_market, _MAX_STEPS_PER_WAKE))
            for suffix, interval in DEPTH_STREAMS.items():
                tasks.create_task(self._periodic(interval, partial(self._push_depth, suffix), 1))

    async def _periodic(self, period: float, action: Callable[[], None], max_burst: int) -> None:
        """Call ``action`` every ``period`` s on a drift-free schedule while running."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + period
        while True:
            if not self._running.is_set():
                await self._running.wait()
                next_at = loop.time() + period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            now = loop.time()
            burst = 0
            while next_at <= now and burst < max_burst and self._running.is_set():
                action()
                next_at += period
                burst += 1
            if next_at <= now:
                next_at = now + period

    # -- public view -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (0 before start)."""
        return self._port

    @property
    def ws_url(self) -> str:
        """Base websocket URL; append ``/ws/<stream>`` or ``/stream?streams=...``."""
        return f"ws://{self._host}:{self.port}"

    @property
    def rest_url(self) -> str:
        """Base REST URL; append ``/api/v3/depth?symbol=...``."""
        return f"http://{self._host}:{self.port}"

    @property
    def symbols(self) -> tuple[str, ...]:
        """Venue symbols served (``"BTCUSDT"``)."""
        return tuple(self._feeds)

    @property
    def faults(self) -> FaultCounters:
        return self._faults

    @property
    def clients(self) -> int:
        """Websocket clients connected now."""
        return len(self._clients)

    @property
    def connections_accepted(self) -> int:
        """Websocket connections accepted since start (reconnects count)."""
        return self._connections_accepted

    def snapshot_requests(self, symbol: str) -> int:
        """Successful REST depth snapshots served for ``symbol`` (resyncs count)."""
        return self._feeds[symbol].snapshots_served

    def book(self, symbol: str, limit: int | None = None) -> DepthSnapshot:
        """The true current book of ``symbol`` (``KeyError`` if not simulated)."""
        return self._feeds[symbol].book.snapshot(limit)

    def pause(self) -> None:
        """Stop the market and push every pending depth change now.

        Afterwards no frame is sent until ``resume``, and a client that applied every
        depth message holds exactly ``book(symbol)``: the quiet point tests compare at.
        """
        self._running.clear()
        for suffix in DEPTH_STREAMS:
            self._push_depth(suffix)

    def resume(self) -> None:
        self._running.set()

    # -- faults ----------------------------------------------------------------------

    def drop_next(self, symbol: str) -> None:
        """Withhold the next diff-depth message of ``symbol`` that would be sent.

        The book moves on, so its subscribers see ``U`` > previous ``u`` + 1. When both
        update speeds are subscribed, the one that pushes first loses a message.
        """
        self._feeds[symbol].drops_pending += 1

    def disconnect_all(self) -> None:
        """Abort every client connection (no close frame: the client sees 1006)."""
        clients = list(self._clients)
        for client in clients:
            self._unregister(client)
            client.connection.transport.abort()
        self._count(disconnected=len(clients))

    def go_silent(self, seconds: float) -> None:
        """Send no market data for ``seconds``; connections stay open and answer control.

        The market keeps moving and what it would have sent is lost, so clients see
        a gap when data resumes.
        """
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self._silent_until = max(self._silent_until, time.monotonic() + seconds)
        self._count(silences=1)

    def mute(self, symbol: str, seconds: float) -> None:
        """Send nothing for ``symbol`` for ``seconds`` while the others keep streaming
        (one instrument's feed goes silent; its market moves on, so a gap follows)."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        feed = self._feeds[symbol]
        feed.muted_until = max(feed.muted_until, time.monotonic() + seconds)
        self._count(silences=1)

    def send_malformed(self) -> None:
        """Send one truncated-JSON text frame to every client."""
        connections = [client.connection for client in self._clients]
        broadcast(connections, _MALFORMED_FRAME, text=True)
        self._count(malformed=len(connections))

    def send_server_shutdown(self) -> None:
        """Send Binance's ``{"e":"serverShutdown","E":<ms>}`` notice to every client.

        It is a connection event, not stream data, so it is never wrapped in
        ``{"stream":..}``. Binance closes the connections some time later: follow with
        ``disconnect_all`` to do the same.
        """
        connections = [client.connection for client in self._clients]
        event = orjson.dumps({"e": "serverShutdown", "E": self._clock_ns() // 1_000_000})
        broadcast(connections, event, text=True)
        self._count(shutdown_notices=len(connections))

    def inject(self, fault: Fault, *, silence_seconds: float = 5.0) -> None:
        """Inject ``fault`` (``DROP`` drops the next depth message of every symbol)."""
        match fault:
            case Fault.DROP:
                for symbol in self._feeds:
                    self.drop_next(symbol)
            case Fault.DISCONNECT:
                self.disconnect_all()
            case Fault.SILENCE:
                self.go_silent(silence_seconds)
            case Fault.MALFORMED:
                self.send_malformed()
            case Fault.SHUTDOWN:
                self.send_server_shutdown()

    def _count(self, **increments: int) -> None:
        faults = self._faults
        self._faults = replace(
            faults, **{name: getattr(faults, name) + n for name, n in increments.items()}
        )

    # -- market data -----------------------------------------------------------------

    def _step_market(self) -> None:
        """One step of every symbol; a bookTicker where the top changed. O(symbols * k)."""
        for symbol, feed in self._feeds.items():
            book = feed.book
            before = book.best()
            diff = book.step()
            for window in feed.windows.values():
                window.add(diff)
            top = book.best()
            if top == before:
                continue
            stream = feed.prefix + "@bookTicker"
            if not self._subscribers.get(stream) or self._is_silent(feed):
                continue
            (bid, bid_qty), (ask, ask_qty) = top
            spec = book.spec
            price, qty = spec.price_decimals, spec.qty_decimals
            ticker = {
                "u": book.update_id,
                "s": symbol,
                "b": format_fixed_places(bid, price),
                "B": format_fixed_places(bid_qty, qty),
                "a": format_fixed_places(ask, price),
                "A": format_fixed_places(ask_qty, qty),
            }
            self._publish(stream, orjson.dumps(ticker))

    def _push_depth(self, suffix: str) -> None:
        """Push the coalesced changes of every symbol on ``<sym>@<suffix>``."""
        for symbol, feed in self._feeds.items():
            diff = feed.windows[suffix].take()
            stream = f"{feed.prefix}@{suffix}"
            if diff is None or not self._subscribers.get(stream) or self._is_silent(feed):
                continue
            if feed.drops_pending:
                feed.drops_pending -= 1
                self._count(dropped_depth=1)
                continue
            spec = feed.book.spec
            event = {
                "e": "depthUpdate",
                "E": self._clock_ns() // 1_000_000,
                "s": symbol,
                "U": diff.first_update_id,
                "u": diff.last_update_id,
                "b": _levels_text(diff.bids, spec),
                "a": _levels_text(diff.asks, spec),
            }
            self._publish(stream, orjson.dumps(event))

    def _is_silent(self, feed: _SymbolFeed) -> bool:
        now = time.monotonic()
        return now < self._silent_until or now < feed.muted_until

    def _publish(self, stream: str, data: bytes) -> None:
        clients = self._subscribers.get(stream, ())
        raw = [client.connection for client in clients if not client.combined]
        combined = [client.connection for client in clients if client.combined]
        if raw:
            broadcast(raw, data, text=True)
        if combined:
            wrapped = b'{"stream":"%s","data":%s}' % (stream.encode(), data)
            broadcast(combined, wrapped, text=True)

    # -- websocket clients -----------------------------------------------------------

    async def _serve_client(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None  # the handshake completed
        url = urlsplit(request.path)
        if url.path == "/stream":
            client = _Client(connection, combined=True)
            names = parse_qs(url.query).get("streams", [""])[0].split("/")
        else:
            client = _Client(connection, combined=False)
            names = [url.path.removeprefix("/ws").removeprefix("/")]
        self._clients.add(client)
        self._connections_accepted += 1
        self._subscribe(client, [name for name in names if name])
        try:
            async for message in connection:
                await connection.send(self._control(client, message), text=True)
        except ConnectionClosed:
            pass
        finally:
            self._unregister(client)

    def _subscribe(self, client: _Client, streams: Sequence[str]) -> None:
        for stream in streams:
            if stream not in client.streams:
                client.streams.append(stream)
                self._subscribers.setdefault(stream, set()).add(client)

    def _unsubscribe(self, client: _Client, streams: Sequence[str]) -> None:
        for stream in streams:
            if stream in client.streams:
                client.streams.remove(stream)
                self._subscribers[stream].discard(client)

    def _unregister(self, client: _Client) -> None:
        self._unsubscribe(client, list(client.streams))
        self._clients.discard(client)

    def _control(self, client: _Client, message: str | bytes) -> bytes:
        """Answer one control message (Binance's replies and error codes)."""
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            return _error(3, "Invalid JSON: expected value at line 1 column 1", None)
        if not isinstance(request, dict):
            return _error(3, "Invalid JSON: expected an object", None)
        request_id = request.get("id")
        if not (request_id is None or isinstance(request_id, int | str)):
            return _error(2, "Invalid request: request ID must be an unsigned integer", None)
        method = request.get("method")
        params = request.get("params", [])
        if method is None:
            return _error(2, "Invalid request: missing field `method`", request_id)
        if not isinstance(params, list):
            return _error(2, "Invalid request: params must be a list", request_id)
        result: Any = None
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(name, str) for name in params):
                return _error(2, "Invalid request: stream names must be strings", request_id)
            if method == "SUBSCRIBE":
                self._subscribe(client, params)
            else:
                self._unsubscribe(client, params)
        elif method == "LIST_SUBSCRIPTIONS":
            result = list(client.streams)
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not params or params[0] != "combined":
                return _error(0, "Unknown property", request_id)
            if method == "GET_PROPERTY":
                result = client.combined
            elif len(params) != 2 or not isinstance(params[1], bool):
                return _error(1, "Invalid value type: expected Boolean", request_id)
            else:
                client.combined = params[1]
        else:
            return _error(
                2,
                f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, "
                "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`",
                request_id,
            )
        return orjson.dumps({"result": result, "id": request_id})

    # -- REST ------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Websocket paths go on to the handshake; REST paths are answered here."""
        url = urlsplit(request.path)
        if url.path in ("/ws", "/stream") or url.path.startswith("/ws/"):
            return None
        if url.path != "/api/v3/depth":
            return connection.respond(404, "Not Found\n")
        status, body = self._rest_depth(parse_qs(url.query))
        response = connection.respond(status, body.decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = _JSON_CONTENT_TYPE
        return response

    def _rest_depth(self, query: dict[str, list[str]]) -> tuple[int, bytes]:
        symbol = query.get("symbol", [""])[0]
        if not symbol:
            return 400, _rest_error(
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        feed = self._feeds.get(symbol)
        if feed is None:
            return 400, _rest_error(-1121, "Invalid symbol.")
        limit_text = query.get("limit", [str(_REST_DEFAULT_LIMIT)])[0]
        if not (limit_text.isascii() and limit_text.isdigit()):
            return 400, _rest_error(
                -1100,
                "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.",
            )
        snapshot = feed.book.snapshot(min(max(int(limit_text), 1), _REST_MAX_LIMIT))
        feed.snapshots_served += 1
        spec = feed.book.spec
        body = {
            "lastUpdateId": snapshot.update_id,
            "bids": _levels_text(snapshot.bids, spec),
            "asks": _levels_text(snapshot.asks, spec),
        }
        return 200, orjson.dumps(body)


def _levels_text(levels: tuple[Level, ...], spec: SimSymbol) -> list[list[str]]:
    price, qty = spec.price_decimals, spec.qty_decimals
    return [[format_fixed_places(px, price), format_fixed_places(size, qty)] for px, size in levels]


def _error(code: int, msg: str, request_id: int | str | None) -> bytes:
    return orjson.dumps({"code": code, "msg": msg, "id": request_id})


def _rest_error(code: int, msg: str) -> bytes:
    return orjson.dumps({"code": code, "msg": msg})


async def run_binance_simulator(
    *,
    symbols: Sequence[SimSymbol] = DEFAULT_SYMBOLS,
    updates_per_second: float = 100.0,
    seed: int = 0,
    levels: int = 100,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Sequence[Fault] = (),
    fault_interval: float = 10.0,
    silence_seconds: float = 5.0,
    on_ready: Callable[[BinanceSpotSimulator], None] | None = None,
) -> None:
    """Serve a simulated Binance spot venue until cancelled (``marketcast simulate``).

    ``on_ready`` gets the started simulator (to print its URLs). ``faults`` are
    injected in rotation, one every ``fault_interval`` seconds.
    """
    if faults and fault_interval <= 0:
        raise ValueError("fault_interval must be positive")
    async with BinanceSpotSimulator(
        symbols=symbols,
        updates_per_second=updates_per_second,
        seed=seed,
        levels=levels,
        host=host,
        port=port,
    ) as simulator:
        if on_ready is not None:
            on_ready(simulator)
        if not faults:
            await asyncio.Event().wait()
        for fault in itertools.cycle(faults):
            await asyncio.sleep(fault_interval)
            simulator.inject(fault, silence_seconds=silence_seconds)
