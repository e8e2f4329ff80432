"""A fake Kraken spot websocket v2 on loopback, speaking Kraken's ``book`` protocol.

One ``websockets`` server serves ``/v2`` as ``ws.kraken.com/v2`` does for an order book
handler (see ``v2_url``), so the real handler connects to it exactly as to Kraken:

- On connect: ``{"channel":"status","type":"update","data":[{"api_version":"v2",
  "connection_id":1,"system":"online","version":"2.0.10"}]}``.
- ``{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10,
  "snapshot":true},"req_id":1}`` -> per symbol an acknowledgement::

    {"method":"subscribe","req_id":1,"result":{"channel":"book","depth":10,
     "snapshot":true,"symbol":"BTC/USD"},"success":true,"time_in":"..","time_out":".."}

  then a snapshot of the top ``depth`` levels and, after every market step that changes
  them, an update, both with Kraken's CRC32 (``feeds.kraken.checksum``) of the top 10::

    {"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],
     "asks":[{"price":61801.3,"qty":0.00000000},{"price":61812.0,"qty":0.41350000}],
     "checksum":1273912730,"timestamp":"2024-08-08T23:54:00.123456Z"}]}

  Numbers are JSON numbers printed with the pair's decimals, trailing zeros kept, as
  Kraken prints them. As on Kraken, an update never deletes a level that falls out of
  the subscribed depth (the client truncates), and a level that comes back into it is
  sent again. ``unsubscribe`` is acknowledged the same way. Errors as Kraken words them:
  ``Currency pair not supported``, ``Already subscribed``, ``Subscription Not Found``,
  ``EGeneral:Invalid arguments``, ``Method not found``.
- ``{"method":"subscribe","params":{"channel":"instrument"}}`` -> an acknowledgement and
  an ``instrument`` snapshot stating each pair's ``price_precision``/``qty_precision``.
- ``{"method":"ping","req_id":7}`` -> ``{"method":"pong","req_id":7,...}``;
  ``{"channel":"heartbeat"}`` about once a second to a subscribed client that was sent
  nothing else in that second. Any other path gets HTTP 404.

Faults (counted in ``faults``): ``DROP`` (``drop_next``: the next update is withheld,
only the checksum can tell), ``CHECKSUM`` (``corrupt_next_checksum``), ``DISCONNECT``,
``SILENCE`` (no book updates and no heartbeats; replies, snapshots and pongs still go
out), ``MALFORMED`` and ``ERROR`` (``send_error``). ``hold_snapshots`` makes new
subscriptions of a symbol wait for ``release_snapshots``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection

from book.fixed import format_fixed_places
from book.l2 import L2Book
from book.snapshot import Level
from feeds.kraken.checksum import CHECKSUM_LEVELS, Precision, book_checksum
from feeds.kraken.sync import DEPTHS
from feeds.metadata import TradingStatus
from feeds.simulator.catalog import simulated_symbols
from feeds.simulator.faults import Fault
from feeds.simulator.market import DepthSnapshot, SimSymbol, SimulatedBook
from feeds.simulator.venue import LoopbackVenue

V2_PATH = "/v2"
HEARTBEAT_INTERVAL = 1.0
"""Kraken sends a heartbeat about once a second when there is nothing else to send."""
_API_VERSION = "2.0.10"
_MALFORMED_FRAME = b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bi'

DEFAULT_SYMBOLS = simulated_symbols("kraken")
"""What the simulator lists by default (``feeds.simulator.catalog``)."""


@dataclass(eq=False, slots=True)
class _Client:
    connection: ServerConnection
    books: dict[str, int] = field(default_factory=dict)
    """Symbol -> subscribed depth (including subscriptions waiting for a snapshot)."""
    instrument: bool = False
    quiet: bool = True
    """Nothing was sent to it since the last heartbeat tick."""


@dataclass(eq=False, slots=True)
class _BookStream:
    """The subscribers of one symbol at one depth, and the levels they hold."""

    depth: int
    view: DepthSnapshot
    subscribers: set[_Client] = field(default_factory=set)
    drifted: L2Book | None = None
    """What the subscribers hold after a dropped update, until their checksum must fail."""


@dataclass(eq=False, slots=True)
class _SymbolFeed:
    book: SimulatedBook
    precision: Precision
    streams: dict[int, _BookStream] = field(default_factory=dict)
    waiting: dict[_Client, int] = field(default_factory=dict)
    """Clients (-> depth) whose snapshot is held by ``hold_snapshots``."""
    drops_pending: int = 0
    corruptions_pending: int = 0
    snapshots_sent: int = 0
    unsubscribes: int = 0


class KrakenSimulator(LoopbackVenue[_Client]):
    """A Kraken spot v2 ``book`` venue on loopback (async context manager).

    ``updates_per_second`` market steps per symbol run on an owned task until exit;
    ``pause``/``resume`` stop and restart the market. ``levels`` levels per side;
    ``port=0`` picks a free port (see ``v2_url``). ``clock_ns`` stamps ``timestamp``.
    Each step costs, per subscribed (symbol, depth), an O(depth) comparison of the top
    levels, one CRC32 over 20 levels, one JSON encode and O(clients) buffer appends.
    """

    supported_faults = frozenset(
        {Fault.DROP, Fault.CHECKSUM, Fault.DISCONNECT, Fault.SILENCE, Fault.MALFORMED, Fault.ERROR}
    )
    malformed_frame = _MALFORMED_FRAME

    def __init__(
        self,
        *,
        symbols: Sequence[SimSymbol] | None = None,
        updates_per_second: float = 100.0,
        seed: int = 0,
        levels: int = 100,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        super().__init__(
            venue="kraken",
            symbols=symbols,
            updates_per_second=updates_per_second,
            seed=seed,
            levels=levels,
            host=host,
            port=port,
            clock_ns=clock_ns,
        )
        self._heartbeat_interval = heartbeat_interval
        self._feeds = {
            symbol: _SymbolFeed(book, Precision(book.spec.price_decimals, book.spec.qty_decimals))
            for symbol, book in self._books.items()
        }
        self._pongs_sent = 0

    # -- public view -----------------------------------------------------------------

    @property
    def v2_url(self) -> str:
        """The websocket v2 endpoint (``ws://host:port/v2``)."""
        return f"{self.ws_url}{V2_PATH}"

    @property
    def endpoints(self) -> Mapping[str, str]:
        return {"websocket": self.v2_url}

    @property
    def silent(self) -> bool:
        """Inside a ``go_silent`` window."""
        return self._is_silent()

    @property
    def pongs_sent(self) -> int:
        return self._pongs_sent

    def snapshots_sent(self, symbol: str) -> int:
        """``book`` snapshots sent for ``symbol`` (one per (re)subscription)."""
        return self._feeds[symbol].snapshots_sent

    def unsubscribes(self, symbol: str) -> int:
        """``book`` subscriptions of ``symbol`` ended by an ``unsubscribe``."""
        return self._feeds[symbol].unsubscribes

    def precision(self, symbol: str) -> Precision:
        return self._feeds[symbol].precision

    # -- faults ----------------------------------------------------------------------

    def drop_next(self, symbol: str) -> None:
        """Withhold the next book update of ``symbol``; Kraken has no sequence numbers,
        so its subscribers can only find out through the checksum.

        Should later updates happen to restore what the subscribers hold before any
        checksum could differ (the drop was harmless), another update is withheld, so
        a drop is always detectable.
        """
        self._feeds[symbol].drops_pending += 1

    def corrupt_next_checksum(self, symbol: str) -> None:
        """Send the next book update of ``symbol`` with a wrong checksum."""
        self._feeds[symbol].corruptions_pending += 1

    def send_error(self, error: str = "EGeneral:Internal error") -> None:
        """Send an error reply ``{"error":..,"success":false,..}`` to every client."""
        now = self._timestamp()
        frame = orjson.dumps({"error": error, "success": False, "time_in": now, "time_out": now})
        self._count(errors=self._to_all(frame))

    def _on_release(self, symbol: str) -> None:
        """Held subscriptions get their snapshot and stream from now on."""
        feed = self._feeds[symbol]
        waiting = list(feed.waiting.items())
        feed.waiting.clear()
        for client, depth in waiting:
            self._start_stream(client, symbol, feed, depth)

    def _inject_into(self, fault: Fault, symbol: str) -> None:
        match fault:
            case Fault.DROP:
                self.drop_next(symbol)
            case Fault.CHECKSUM:
                self.corrupt_next_checksum(symbol)

    def _announce(self, fault: Fault) -> None:
        if fault is Fault.ERROR:
            self.send_error()

    # -- market data -----------------------------------------------------------------

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._heartbeats()]

    async def _heartbeats(self) -> None:
        """Heartbeats go on while the market is paused: a quiet market still beats."""
        heartbeat = orjson.dumps({"channel": "heartbeat"})
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            if not self._is_silent():
                quiet = [c for c in self._clients if c.quiet and (c.books or c.instrument)]
                self._send(quiet, heartbeat)
            for client in self._clients:
                client.quiet = True

    def _step_market(self) -> None:
        for symbol, feed in self._feeds.items():
            feed.book.step()
            for stream in feed.streams.values():
                self._push_update(symbol, feed, stream)

    def _push_update(self, symbol: str, feed: _SymbolFeed, stream: _BookStream) -> None:
        """Send what changed in the top ``depth`` levels, the way Kraken does."""
        old = stream.view
        new = feed.book.snapshot(stream.depth)
        bids = _changes(old.bids, new.bids, stream.depth, bids=True)
        asks = _changes(old.asks, new.asks, stream.depth, bids=False)
        stream.view = new
        if not (bids or asks) or self._is_silent():
            return  # while silent, what would have been sent is lost
        if feed.drops_pending:
            feed.drops_pending -= 1
            self._count(dropped=1)
            if stream.drifted is None:
                stream.drifted = _holding(old)
            return
        checksum = book_checksum(new.asks, new.bids, feed.precision)
        if feed.corruptions_pending:
            feed.corruptions_pending -= 1
            self._count(corrupted_checksums=1)
            checksum = (checksum + 1) % 2**32
        self._send(
            stream.subscribers, self._book_frame("update", symbol, feed, bids, asks, checksum)
        )
        if stream.drifted is not None:
            self._follow_drift(feed, stream, bids, asks)

    def _follow_drift(
        self, feed: _SymbolFeed, stream: _BookStream, bids: list[Level], asks: list[Level]
    ) -> None:
        """After a drop: stop following once the subscribers' checksum must differ;
        withhold another update if this one restored what they hold."""
        held = stream.drifted
        assert held is not None
        held.apply(bids, asks)
        held.truncate(stream.depth)
        new = stream.view
        top = CHECKSUM_LEVELS
        if (held.top_bids(top), held.top_asks(top)) != (new.bids[:top], new.asks[:top]):
            stream.drifted = None  # this message's checksum fails for them: they resync
        elif (held.top_bids(stream.depth), held.top_asks(stream.depth)) == (new.bids, new.asks):
            stream.drifted = None
            feed.drops_pending += 1  # the drop went unnoticed and healed: drop another

    def _start_stream(self, client: _Client, symbol: str, feed: _SymbolFeed, depth: int) -> None:
        """Send the snapshot and add the client to the (symbol, depth) stream."""
        stream = feed.streams.get(depth)
        if stream is None:
            stream = feed.streams[depth] = _BookStream(depth, feed.book.snapshot(depth))
        view = stream.view
        checksum = book_checksum(view.asks, view.bids, feed.precision)
        frame = self._book_frame("snapshot", symbol, feed, view.bids, view.asks, checksum)
        self._send([client], frame)
        stream.subscribers.add(client)
        feed.snapshots_sent += 1

    def _book_frame(
        self,
        kind: str,
        symbol: str,
        feed: _SymbolFeed,
        bids: Sequence[Level],
        asks: Sequence[Level],
        checksum: int,
    ) -> bytes:
        precision = feed.precision
        entry = {
            "symbol": symbol,
            "bids": [_level(level, precision) for level in bids],
            "asks": [_level(level, precision) for level in asks],
            "checksum": checksum,
            "timestamp": self._timestamp(),
        }
        return orjson.dumps({"channel": "book", "type": kind, "data": [entry]})

    def _instrument_frame(self) -> bytes:
        pairs = []
        for spec in self.listed:  # what the venue lists now (``set_listing``)
            symbol, feed = spec.symbol, self._feeds[spec.symbol]
            base, _, quote = symbol.partition("/")
            pairs.append(
                {
                    "symbol": symbol,
                    "base": base,
                    "quote": quote,
                    "status": "online" if spec.status is TradingStatus.TRADING else "maintenance",
                    "price_precision": feed.precision.price,
                    "price_increment": orjson.Fragment(spec.tick.encode()),
                    "qty_precision": feed.precision.qty,
                    "qty_increment": orjson.Fragment(spec.lot.encode()),
                    "qty_min": orjson.Fragment(spec.lot.encode()),
                    "cost_precision": 5,
                    "marginable": False,
                    "has_index": True,
                }
            )
        assets = sorted({part for spec in self.listed for part in spec.symbol.split("/")})
        data = {
            "assets": [{"id": asset, "status": "enabled"} for asset in assets],
            "pairs": pairs,
        }
        return orjson.dumps({"channel": "instrument", "type": "snapshot", "data": data})

    def _send(self, clients: Collection[_Client], frame: bytes) -> None:
        """Send and mark the clients as not quiet (no heartbeat due this second)."""
        super()._send(clients, frame)
        for client in clients:
            client.quiet = False

    def _timestamp(self) -> str:
        return _rfc3339(self._clock_ns())

    # -- websocket clients -----------------------------------------------------------

    def _is_websocket_path(self, path: str) -> bool:
        return path == V2_PATH

    def _accept(self, connection: ServerConnection) -> _Client:
        """A new client, greeted with the ``status`` message."""
        client = _Client(connection)
        status = {
            "api_version": "v2",
            "connection_id": self._connections_accepted,
            "system": "online",
            "version": _API_VERSION,
        }
        self._send(
            [client], orjson.dumps({"channel": "status", "type": "update", "data": [status]})
        )
        return client

    def _forget(self, client: _Client) -> None:
        for symbol in list(client.books):
            self._end_subscription(client, symbol)

    def _end_subscription(self, client: _Client, symbol: str) -> None:
        feed = self._feeds[symbol]
        depth = client.books.pop(symbol)
        feed.waiting.pop(client, None)
        stream = feed.streams.get(depth)
        if stream is not None:
            stream.subscribers.discard(client)
            if not stream.subscribers:
                del feed.streams[depth]

    def _on_message(self, client: _Client, message: str | bytes) -> None:
        """Answer one request, as Kraken does (one reply per symbol of a book request)."""
        time_in = self._timestamp()
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            self._reply(client, time_in, None, None, error="EGeneral:Invalid arguments")
            return
        method, req_id = request.get("method"), request.get("req_id")
        params = request.get("params", {})
        if method == "ping":
            self._pongs_sent += 1
            self._reply(client, time_in, "pong", req_id)
        elif method not in ("subscribe", "unsubscribe"):
            self._reply(client, time_in, method, req_id, error="Method not found")
        elif not isinstance(params, dict):
            self._reply(client, time_in, method, req_id, error="EGeneral:Invalid arguments")
        elif params.get("channel") == "instrument":
            self._instrument_request(client, time_in, method, req_id, params)
        elif params.get("channel") == "book":
            self._book_request(client, time_in, method, req_id, params)
        else:
            error = f"Channel {params.get('channel')} not supported"
            self._reply(client, time_in, method, req_id, error=error)

    def _instrument_request(
        self, client: _Client, time_in: str, method: str, req_id: object, params: dict[str, Any]
    ) -> None:
        subscribe = method == "subscribe"
        snapshot = params.get("snapshot", True)
        result: dict[str, object] = {"channel": "instrument"}
        if subscribe:
            result["snapshot"] = snapshot
        self._reply(client, time_in, method, req_id, result=result)
        client.instrument = subscribe
        if subscribe and snapshot is True:
            self._send([client], self._instrument_frame())

    def _book_request(
        self, client: _Client, time_in: str, method: str, req_id: object, params: dict[str, Any]
    ) -> None:
        symbols = params.get("symbol")
        depth = params.get("depth", 10)
        snapshot = params.get("snapshot", True)
        if (
            not isinstance(symbols, list)
            or not symbols
            or not all(isinstance(symbol, str) for symbol in symbols)
            or depth not in DEPTHS
            or not isinstance(snapshot, bool)
        ):
            self._reply(client, time_in, method, req_id, error="EGeneral:Invalid arguments")
            return
        for symbol in symbols:
            feed = self._feeds.get(symbol)
            result = {"channel": "book", "depth": depth, "symbol": symbol}
            if feed is None:
                error = "Currency pair not supported"
                self._reply(client, time_in, method, req_id, error=error, symbol=symbol)
            elif method == "unsubscribe":
                if client.books.get(symbol) != depth:
                    error = "Subscription Not Found"
                    self._reply(client, time_in, method, req_id, error=error, symbol=symbol)
                    continue
                self._end_subscription(client, symbol)
                feed.unsubscribes += 1
                self._reply(client, time_in, method, req_id, result=result)
            elif symbol in client.books:
                error = "Already subscribed"
                self._reply(client, time_in, method, req_id, error=error, symbol=symbol)
            else:
                client.books[symbol] = depth
                self._reply(
                    client, time_in, method, req_id, result={**result, "snapshot": snapshot}
                )
                if snapshot and self._is_held(symbol):
                    feed.waiting[client] = depth
                elif snapshot:
                    self._start_stream(client, symbol, feed, depth)
                else:
                    self._join_stream(client, feed, depth)

    def _join_stream(self, client: _Client, feed: _SymbolFeed, depth: int) -> None:
        stream = feed.streams.get(depth)
        if stream is None:
            stream = feed.streams[depth] = _BookStream(depth, feed.book.snapshot(depth))
        stream.subscribers.add(client)

    def _reply(
        self,
        client: _Client,
        time_in: str,
        method: object,
        req_id: object,
        *,
        result: dict[str, object] | None = None,
        error: str | None = None,
        symbol: str | None = None,
    ) -> None:
        reply: dict[str, object] = {}
        if method is not None:
            reply["method"] = method
        if req_id is not None:
            reply["req_id"] = req_id
        if result is not None:
            reply["result"] = result
        if error is not None:
            reply["error"] = error
        if symbol is not None:
            reply["symbol"] = symbol
        if method != "pong":
            reply["success"] = error is None
        reply["time_in"] = time_in
        reply["time_out"] = self._timestamp()
        self._send([client], orjson.dumps(reply))


def _changes(
    old: tuple[Level, ...], new: tuple[Level, ...], depth: int, *, bids: bool
) -> list[Level]:
    """The levels Kraken sends to turn the top-``depth`` ``old`` into ``new``.

    Changed and new levels with their quantity; a level that left the top with qty 0,
    unless the client's truncation removes it anyway (the side is full and the level is
    beyond its worst). Best first. O(depth).
    """
    held = dict(old)
    now = dict(new)
    changes = [(px, qty) for px, qty in new if held.get(px) != qty]
    full = len(new) == depth
    worst = new[-1][0] if new else 0
    for px in held:
        if px in now:
            continue
        truncated = full and (px < worst if bids else px > worst)
        if not truncated:
            changes.append((px, 0))
    changes.sort(reverse=bids)
    return changes


def _holding(view: DepthSnapshot) -> L2Book:
    """A book holding ``view``: what subscribers have when an update is withheld."""
    book = L2Book("drifted")
    book.load(view.bids, view.asks)
    return book


def _level(level: Level, precision: Precision) -> dict[str, orjson.Fragment]:
    price, qty = level
    return {
        "price": orjson.Fragment(format_fixed_places(price, precision.price).encode()),
        "qty": orjson.Fragment(format_fixed_places(qty, precision.qty).encode()),
    }


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"
