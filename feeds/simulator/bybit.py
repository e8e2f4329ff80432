"""A fake Bybit v5 public market-data venue (spot or linear) on loopback.

One ``websockets`` server serves what ``wss://stream.bybit.com/v5/public/<category>``
serves to an orderbook feed handler, so the real handler connects to it exactly as to
Bybit (other paths get HTTP 404):

- Requests: ``{"op":"subscribe"|"unsubscribe","args":["orderbook.50.BTCUSDT"],"req_id":..}``
  (spot takes at most 10 topics per request) and ``{"op":"ping"}``; replies::

    {"success":true,"ret_msg":"subscribe","conn_id":"..","req_id":"","op":"subscribe"}  (spot)
    {"success":true,"ret_msg":"","conn_id":"..","req_id":"","op":"subscribe"}           (linear)
    {"success":true,"ret_msg":"pong","conn_id":"..","req_id":"","op":"ping"}
    {"success":false,"ret_msg":"Invalid symbol :[orderbook.50.BTCUSDX]",..,"op":"subscribe"}

- ``orderbook.{1,50,200,1000}.{symbol}``: a ``snapshot`` of the topic's top levels on
  subscribing, then every push interval (Bybit's: 10/20/200/200 ms spot, 10/20/100/200
  ms linear) a ``delta`` with the levels that changed within the top (0 for a level that
  left it), only when something changed::

    {"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1672304484978,
     "data":{"s":"BTCUSDT","b":[["61799.99","0"]],"a":[["61800.05","0.41"]],
             "u":18521289,"seq":7961638725},"cts":1672304484978}

  ``u`` numbers each topic's messages (+1 each), ``seq`` is the book's cross sequence
  (it only grows). Depth 1 sends snapshots only, repeated with the same ``u`` after 3 s
  without change. Every ``snapshot_every`` pushes (and on ``resend_snapshot``) a topic
  sends an unsolicited snapshot instead of a delta, as Bybit may at any time.

Every client of a topic gets the same bytes (``websockets.broadcast``). Faults:
``drop_next`` (a ``u`` gap), ``restart`` (the next message is a snapshot with ``u`` = 1,
as after a Bybit service restart), ``disconnect_all``, ``go_silent`` (market data of
that window is lost; control requests are still answered), ``send_malformed``,
``send_error``; all counted in ``faults``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from book.fixed import format_fixed_places
from feeds.simulator.market import DepthSnapshot, LoopbackVenue, SimSymbol, SimulatedBook


class Category(StrEnum):
    """Which public stream the simulator serves (``/v5/public/<category>``)."""

    SPOT = "spot"
    LINEAR = "linear"


DEFAULT_SYMBOLS: Mapping[Category, tuple[SimSymbol, ...]] = {
    Category.SPOT: (
        SimSymbol(
            "BTCUSDT",
            price="61800.00",
            tick="0.01",
            lot="0.000001",
            mean_qty="0.25",
            max_gap_ticks=40,
            price_decimals=2,
            qty_decimals=6,
        ),
        SimSymbol(
            "ETHUSDT",
            price="2600.00",
            tick="0.01",
            lot="0.00001",
            mean_qty="3",
            max_gap_ticks=8,
            price_decimals=2,
            qty_decimals=5,
        ),
        SimSymbol(
            "SOLUSDT",
            price="145.00",
            tick="0.01",
            lot="0.001",
            mean_qty="40",
            max_gap_ticks=2,
            price_decimals=2,
            qty_decimals=3,
        ),
    ),
    Category.LINEAR: (
        SimSymbol(
            "BTCUSDT",
            price="61800.00",
            tick="0.10",
            lot="0.001",
            mean_qty="2",
            max_gap_ticks=5,
            price_decimals=2,
            qty_decimals=3,
        ),
        SimSymbol(
            "ETHUSDT",
            price="2600.00",
            tick="0.01",
            lot="0.01",
            mean_qty="20",
            max_gap_ticks=4,
            price_decimals=2,
            qty_decimals=2,
        ),
        SimSymbol(
            "SOLUSDT",
            price="145.000",
            tick="0.010",
            lot="0.1",
            mean_qty="200",
            max_gap_ticks=2,
            price_decimals=3,
            qty_decimals=1,
        ),
    ),
}
"""BTC/ETH/SOL against USDT with Bybit's tick and lot sizes, per category."""

PUSH_INTERVALS: Mapping[Category, Mapping[int, float]] = {
    Category.SPOT: {1: 0.01, 50: 0.02, 200: 0.2, 1000: 0.2},
    Category.LINEAR: {1: 0.01, 50: 0.02, 200: 0.1, 1000: 0.2},
}
"""Orderbook depth -> push interval in seconds."""
LEVEL1_RESEND_SECONDS = 3.0
SPOT_TOPICS_PER_REQUEST = 10
MAX_UPDATES_PER_SECOND = 10_000.0
_MAX_STEPS_PER_WAKE = 100
_MALFORMED_FRAME = b'{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":16723044849'
"""A frame cut short: what a client sees if the venue sends garbage."""
_ERROR_MESSAGE = "error:internal server error"


class Fault(StrEnum):
    """Faults a running simulator can inject (``inject``), named for CLI flags."""

    DROP = "drop"
    RESTART = "restart"
    DISCONNECT = "disconnect"
    SILENCE = "silence"
    MALFORMED = "malformed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class FaultCounters:
    """What was injected so far.

    ``dropped``: topic messages withheld; ``restarts``: ``u`` = 1 snapshots sent;
    ``unsolicited_snapshots``: snapshots pushed to existing subscribers; ``disconnected``:
    connections aborted; ``silences``: ``go_silent`` calls; ``malformed``/``errors``:
    frames sent, one per connected client.
    """

    dropped: int = 0
    restarts: int = 0
    unsolicited_snapshots: int = 0
    disconnected: int = 0
    silences: int = 0
    malformed: int = 0
    errors: int = 0


class _Push(StrEnum):
    """What a topic sends at its next push."""

    DELTA = "delta"
    SNAPSHOT = "snapshot"
    RESTART = "restart"


@dataclass(eq=False, slots=True)
class _Client:
    connection: ServerConnection
    conn_id: str
    topics: set[str] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class _Topic:
    """One ``orderbook.{depth}.{symbol}`` stream and the state its subscribers hold."""

    name: str
    depth: int
    book: SimulatedBook
    update_id: int
    """``u`` of the last message."""
    subscribers: set[_Client] = field(default_factory=set)
    awaiting_snapshot: set[_Client] = field(default_factory=set)
    """Subscribed while the venue was silent: their snapshot goes out when it speaks."""
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)
    seq: int = 0
    """Cross sequence of the published state."""
    pushes: int = 0
    next_push: _Push = _Push.DELTA
    drops_pending: int = 0
    last_sent: float = 0.0


class BybitSimulator(LoopbackVenue):
    """A Bybit v5 public ``category`` venue on loopback (async context manager).

    ``updates_per_second`` market steps per symbol run on an owned task until exit;
    ``pause``/``resume`` stop and restart the market. ``levels`` levels per side;
    ``port=0`` picks a free port (``ws_url``). ``clock_ns`` stamps ``ts``/``cts`` (ms).
    Each push costs O(depth) per subscribed topic to find the changes, plus one JSON
    encode and O(clients) buffer appends when something changed.
    """

    def __init__(
        self,
        *,
        category: Category = Category.SPOT,
        symbols: Sequence[SimSymbol] | None = None,
        updates_per_second: float = 100.0,
        seed: int = 0,
        levels: int = 100,
        snapshot_every: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        specs = DEFAULT_SYMBOLS[category] if symbols is None else tuple(symbols)
        if not 0 < updates_per_second <= MAX_UPDATES_PER_SECOND:
            raise ValueError(f"updates_per_second must be in (0, {MAX_UPDATES_PER_SECOND}]")
        if not specs or len({spec.symbol for spec in specs}) != len(specs):
            raise ValueError("symbols must be non-empty and distinct")
        if snapshot_every < 0:
            raise ValueError("snapshot_every must not be negative (0 = never)")
        super().__init__(host=host, port=port, name=f"bybit-{category}-simulator")
        self.category = category
        self.path = f"/v5/public/{category}"
        self._period = 1.0 / updates_per_second
        self._snapshot_every = snapshot_every
        self._clock_ns = clock_ns
        self._books = {spec.symbol: SimulatedBook(spec, levels=levels, seed=seed) for spec in specs}
        self._topics: dict[str, _Topic] = {}
        for symbol, book in self._books.items():
            for depth in PUSH_INTERVALS[category]:
                name = f"orderbook.{depth}.{symbol}"
                first_u = random.Random(f"{seed}:{name}").randrange(10**6, 10**8)
                self._topics[name] = _Topic(name, depth, book, first_u)
        self._clients: set[_Client] = set()
        self._faults = FaultCounters()
        self._connections_accepted = 0

    # -- public view -----------------------------------------------------------------

    @property
    def stream_url(self) -> str:
        """The websocket URL of the served category (``ws://host:port/v5/public/spot``)."""
        return self.ws_url + self.path

    @property
    def rest_url(self) -> str:
        """Same host and port (orderbooks need no REST here; kept for uniform wiring)."""
        return f"http://{self._host}:{self.port}"

    @property
    def symbols(self) -> tuple[str, ...]:
        """Venue symbols served (``"BTCUSDT"``)."""
        return tuple(self._books)

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

    def subscribers(self, topic: str) -> int:
        """Connections subscribed to ``topic`` now."""
        return len(self._topics[topic].subscribers)

    def update_id(self, topic: str) -> int:
        """``u`` of the last message of ``topic``."""
        return self._topics[topic].update_id

    def book(self, symbol: str, limit: int | None = None) -> DepthSnapshot:
        """The true current book of ``symbol`` (``KeyError`` if not simulated)."""
        return self._books[symbol].snapshot(limit)

    def pause(self) -> None:
        """Stop the market and push every pending change now.

        Afterwards no market data is sent until ``resume``, and a client that applied
        every message of a topic holds exactly ``book(symbol, depth)``.
        """
        super().pause()
        for depth in PUSH_INTERVALS[self.category]:
            self._push(depth)

    # -- faults ----------------------------------------------------------------------

    def drop_next(self, symbol: str) -> None:
        """Withhold the next message of each of ``symbol``'s topics (its ``u`` is used up)."""
        for topic in self._symbol_topics(symbol):
            topic.drops_pending += 1

    def restart(self, symbol: str) -> None:
        """Make ``symbol``'s topics restart: their next message is a snapshot with ``u`` = 1."""
        for topic in self._symbol_topics(symbol):
            topic.next_push = _Push.RESTART

    def resend_snapshot(self, symbol: str) -> None:
        """Make ``symbol``'s topics send a snapshot (next ``u``) instead of their next delta."""
        for topic in self._symbol_topics(symbol):
            if topic.next_push is _Push.DELTA:
                topic.next_push = _Push.SNAPSHOT

    def disconnect_all(self) -> None:
        """Abort every client connection (no close frame: the client sees 1006)."""
        clients = list(self._clients)
        for client in clients:
            self._unregister(client)
            client.connection.transport.abort()
        self._count(disconnected=len(clients))

    def go_silent(self, seconds: float) -> None:
        """Push no market data for ``seconds``; the market moves on and those messages
        are lost (their ``u`` used up), so subscribers see a gap when data resumes."""
        super().go_silent(seconds)
        self._count(silences=1)

    def send_malformed(self) -> None:
        """Send one truncated-JSON text frame to every client."""
        connections = [client.connection for client in self._clients]
        broadcast(connections, _MALFORMED_FRAME, text=True)
        self._count(malformed=len(connections))

    def send_error(self, message: str = _ERROR_MESSAGE) -> None:
        """Send a failed-request reply (``"success":false``) to every client."""
        for client in self._clients:
            broadcast([client.connection], self._reply(client, "subscribe", "", message), text=True)
        self._count(errors=len(self._clients))

    def inject(self, fault: Fault, *, silence_seconds: float = 5.0) -> None:
        """Inject ``fault`` (``DROP``/``RESTART`` hit every symbol)."""
        match fault:
            case Fault.DROP:
                for symbol in self._books:
                    self.drop_next(symbol)
            case Fault.RESTART:
                for symbol in self._books:
                    self.restart(symbol)
            case Fault.DISCONNECT:
                self.disconnect_all()
            case Fault.SILENCE:
                self.go_silent(silence_seconds)
            case Fault.MALFORMED:
                self.send_malformed()
            case Fault.ERROR:
                self.send_error()

    def _symbol_topics(self, symbol: str) -> list[_Topic]:
        if symbol not in self._books:
            raise KeyError(symbol)
        return [topic for topic in self._topics.values() if topic.book is self._books[symbol]]

    def _count(self, **increments: int) -> None:
        faults = self._faults
        self._faults = replace(
            faults, **{name: getattr(faults, name) + n for name, n in increments.items()}
        )

    # -- market data -----------------------------------------------------------------

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        loops = [self._periodic(self._period, self._step_market, _MAX_STEPS_PER_WAKE)]
        for depth, interval in PUSH_INTERVALS[self.category].items():
            loops.append(self._periodic(interval, partial(self._push, depth), 1))
        return loops

    def _step_market(self) -> None:
        for book in self._books.values():
            book.step()

    def _push(self, depth: int) -> None:
        """One push of every subscribed topic of ``depth``. O(depth) per topic."""
        silent = self._is_silent()
        for topic in self._topics.values():
            if topic.depth != depth or not (topic.subscribers or topic.awaiting_snapshot):
                continue
            if topic.awaiting_snapshot and not silent:
                self._send_snapshot(topic, topic.awaiting_snapshot)
                topic.subscribers |= topic.awaiting_snapshot
                topic.awaiting_snapshot.clear()
            message = self._next_message(topic)
            if message is None or not topic.subscribers:
                continue
            if topic.drops_pending:
                topic.drops_pending -= 1
                self._count(dropped=1)
            elif not silent:
                broadcast([client.connection for client in topic.subscribers], message, text=True)

    def _next_message(self, topic: _Topic) -> bytes | None:
        """Advance ``topic`` to the current book; the message that says so, if any."""
        snapshot = topic.book.snapshot(topic.depth)
        bids, asks = dict(snapshot.bids), dict(snapshot.asks)
        topic.pushes += 1
        push = topic.next_push
        if (
            push is _Push.DELTA
            and self._snapshot_every
            and topic.pushes % self._snapshot_every == 0
        ):
            push = _Push.SNAPSHOT
        now = time.monotonic()
        kind, out_bids, out_asks = "snapshot", list(bids.items()), list(asks.items())
        if push is _Push.RESTART:
            topic.update_id = 1
            self._count(restarts=1)
        elif push is _Push.SNAPSHOT:
            topic.update_id += 1
            self._count(unsolicited_snapshots=1)
        else:
            changed_bids, changed_asks = _changes(topic.bids, bids), _changes(topic.asks, asks)
            if changed_bids or changed_asks:
                topic.update_id += 1
            elif topic.depth != 1 or now - topic.last_sent < LEVEL1_RESEND_SECONDS:
                return None  # (level 1 repeats its snapshot, same u, after 3 s unchanged)
            if topic.depth != 1:  # level 1 sends snapshots only
                kind, out_bids, out_asks = "delta", changed_bids, changed_asks
        topic.next_push = _Push.DELTA
        topic.bids, topic.asks, topic.seq = bids, asks, topic.book.update_id
        topic.last_sent = now
        return self._message(topic, kind, out_bids, out_asks)

    def _send_snapshot(self, topic: _Topic, clients: Iterable[_Client]) -> None:
        """The published state of ``topic`` (what its other subscribers hold) to ``clients``."""
        message = self._message(topic, "snapshot", topic.bids.items(), topic.asks.items())
        broadcast([client.connection for client in clients], message, text=True)

    def _message(
        self,
        topic: _Topic,
        kind: str,
        bids: Iterable[tuple[int, int]],
        asks: Iterable[tuple[int, int]],
    ) -> bytes:
        spec = topic.book.spec
        ms = self._clock_ns() // 1_000_000

        def text(levels: Iterable[tuple[int, int]]) -> list[list[str]]:
            return [
                [
                    format_fixed_places(price, spec.price_decimals),
                    format_fixed_places(size, spec.qty_decimals) if size else "0",
                ]
                for price, size in levels
            ]

        return orjson.dumps(
            {
                "topic": topic.name,
                "type": kind,
                "ts": ms,
                "data": {
                    "s": spec.symbol,
                    "b": text(sorted(bids, reverse=True)),
                    "a": text(sorted(asks)),
                    "u": topic.update_id,
                    "seq": topic.seq,
                },
                "cts": ms,
            }
        )

    # -- websocket clients -----------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path != self.path:
            return connection.respond(404, "Not Found\n")
        return None

    async def _serve_client(self, connection: ServerConnection) -> None:
        client = _Client(connection, str(uuid.uuid4()))
        self._clients.add(client)
        self._connections_accepted += 1
        try:
            async for message in connection:
                self._on_request(client, message)
        except ConnectionClosed:
            pass
        finally:
            self._unregister(client)

    def _unregister(self, client: _Client) -> None:
        for name in client.topics:
            self._topics[name].subscribers.discard(client)
            self._topics[name].awaiting_snapshot.discard(client)
        client.topics.clear()
        self._clients.discard(client)

    def _on_request(self, client: _Client, message: str | bytes) -> None:
        """Answer one request; a new subscription's snapshot follows its reply."""
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            reply = self._reply(client, "", "", "error:request must be a JSON object")
            broadcast([client.connection], reply, text=True)
            return
        op = str(request.get("op", ""))
        req_id = str(request.get("req_id", ""))
        error = ""
        added: list[_Topic] = []
        if op == "ping":
            reply = self._reply(client, op, req_id, ret_msg="pong")
            broadcast([client.connection], reply, text=True)
            return
        if op in ("subscribe", "unsubscribe"):
            args = request.get("args")
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                error = "error:args must be a list of topics"
            elif self.category is Category.SPOT and len(args) > SPOT_TOPICS_PER_REQUEST:
                error = f"error:args size >{SPOT_TOPICS_PER_REQUEST}"
            elif op == "subscribe":
                error, added = self._subscribe(client, args)
            else:
                self._unsubscribe(client, args)
        else:
            error = f"error:unknown op {op!r}"
        ok_msg = "subscribe" if op == "subscribe" and self.category is Category.SPOT else ""
        reply = self._reply(client, op, req_id, error, ok_msg)
        broadcast([client.connection], reply, text=True)
        silent = self._is_silent()
        for topic in added:
            if silent:
                topic.awaiting_snapshot.add(client)
                continue
            if not topic.subscribers:
                # Nobody holds this topic's state: publish the current book (no message).
                snapshot = topic.book.snapshot(topic.depth)
                topic.bids, topic.asks = dict(snapshot.bids), dict(snapshot.asks)
                topic.seq = topic.book.update_id
            self._send_snapshot(topic, [client])
            topic.subscribers.add(client)

    def _subscribe(self, client: _Client, args: list[str]) -> tuple[str, list[_Topic]]:
        """Validate every topic first: a request subscribes all of them or none."""
        for name in args:
            if name not in self._topics:
                return f"Invalid symbol :[{name}]", []
            if name in client.topics:
                return f"error:already subscribed,topic:{name}", []
        client.topics.update(args)
        return "", [self._topics[name] for name in dict.fromkeys(args)]

    def _unsubscribe(self, client: _Client, args: list[str]) -> None:
        for name in args:
            if name in client.topics:
                client.topics.discard(name)
                self._topics[name].subscribers.discard(client)
                self._topics[name].awaiting_snapshot.discard(client)

    def _reply(
        self, client: _Client, op: str, req_id: str, error: str = "", ret_msg: str = ""
    ) -> bytes:
        return orjson.dumps(
            {
                "success": not error,
                "ret_msg": error or ret_msg,
                "conn_id": client.conn_id,
                "req_id": req_id,
                "op": op,
            }
        )


def _changes(old: dict[int, int], new: dict[int, int]) -> list[tuple[int, int]]:
    """Levels whose size differs between two states of the top (0 = gone). O(n)."""
    changed = [(price, size) for price, size in new.items() if old.get(price) != size]
    changed += [(price, 0) for price in old if price not in new]
    return changed


async def run_bybit_simulator(
    *,
    category: Category = Category.SPOT,
    symbols: Sequence[SimSymbol] | None = None,
    updates_per_second: float = 100.0,
    seed: int = 0,
    levels: int = 100,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Sequence[Fault] = (),
    fault_interval: float = 10.0,
    silence_seconds: float = 5.0,
    on_ready: Callable[[BybitSimulator], None] | None = None,
) -> None:
    """Serve a simulated Bybit v5 public venue until cancelled.

    ``on_ready`` gets the started simulator (to print its URL). ``faults`` are injected
    in rotation, one every ``fault_interval`` seconds.
    """
    if faults and fault_interval <= 0:
        raise ValueError("fault_interval must be positive")
    async with BybitSimulator(
        category=category,
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
