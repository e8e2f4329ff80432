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

Every client of a topic gets the same bytes (``websockets.broadcast``). Faults: ``DROP``
(``drop_next``: a ``u`` gap), ``RESTART`` (``restart``: the next message is a snapshot
with ``u`` = 1, as after a Bybit service restart), ``DISCONNECT``, ``SILENCE`` (market
data of that window is lost, its ``u`` used up; control requests are still answered),
``MALFORMED``, ``ERROR`` (``send_error``); all counted in ``faults``. ``hold_snapshots``
keeps new subscriptions of a symbol waiting for their snapshot until released.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection

from book.fixed import format_fixed_places
from feeds.bybit.adapter import BybitCategory
from feeds.metadata import TradingStatus
from feeds.simulator.faults import Fault
from feeds.simulator.market import SimSymbol, SimulatedBook
from feeds.simulator.venue import LoopbackVenue, Query, RestRoute

PUSH_INTERVALS: Mapping[BybitCategory, Mapping[int, float]] = {
    BybitCategory.SPOT: {1: 0.01, 50: 0.02, 200: 0.2, 1000: 0.2},
    BybitCategory.LINEAR: {1: 0.01, 50: 0.02, 200: 0.1, 1000: 0.2},
}
"""Orderbook depth -> push interval in seconds."""
LEVEL1_RESEND_SECONDS = 3.0
SPOT_TOPICS_PER_REQUEST = 10
_MALFORMED_FRAME = b'{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":16723044849'
_ERROR_MESSAGE = "error:internal server error"


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
    """Subscribed while the venue was silent or the symbol held (``hold_snapshots``):
    their snapshot goes out at the first push after that."""
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)
    seq: int = 0
    """Cross sequence of the published state."""
    pushes: int = 0
    next_push: _Push = _Push.DELTA
    drops_pending: int = 0
    last_sent: float = 0.0


class BybitSimulator(LoopbackVenue[_Client]):
    """A Bybit v5 public ``category`` venue on loopback (async context manager).

    ``updates_per_second`` market steps per symbol run on an owned task until exit;
    ``pause``/``resume`` stop and restart the market. ``levels`` levels per side;
    ``port=0`` picks a free port (``ws_url``). ``clock_ns`` stamps ``ts``/``cts`` (ms).
    Each push costs O(depth) per subscribed topic to find the changes, plus one JSON
    encode and O(clients) buffer appends when something changed.
    """

    supported_faults = frozenset(
        {Fault.DROP, Fault.RESTART, Fault.DISCONNECT, Fault.SILENCE, Fault.MALFORMED, Fault.ERROR}
    )
    malformed_frame = _MALFORMED_FRAME

    def __init__(
        self,
        *,
        category: BybitCategory = BybitCategory.SPOT,
        symbols: Sequence[SimSymbol] | None = None,
        updates_per_second: float = 100.0,
        seed: int = 0,
        levels: int = 100,
        snapshot_every: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if snapshot_every < 0:
            raise ValueError("snapshot_every must not be negative (0 = never)")
        super().__init__(
            venue="bybit" if category is BybitCategory.SPOT else f"bybit-{category}",
            symbols=symbols,
            updates_per_second=updates_per_second,
            seed=seed,
            levels=levels,
            host=host,
            port=port,
            clock_ns=clock_ns,
        )
        self.category = category
        self.path = f"/v5/public/{category}"
        self._snapshot_every = snapshot_every
        self._topics: dict[str, _Topic] = {}
        for symbol, book in self._books.items():
            for depth in PUSH_INTERVALS[category]:
                name = f"orderbook.{depth}.{symbol}"
                first_u = random.Random(f"{seed}:{name}").randrange(10**6, 10**8)
                self._topics[name] = _Topic(name, depth, book, first_u)

    # -- public view -----------------------------------------------------------------

    @property
    def stream_url(self) -> str:
        """The websocket URL of the served category (``ws://host:port/v5/public/spot``)."""
        return self.ws_url + self.path

    @property
    def endpoints(self) -> Mapping[str, str]:
        return {
            "websocket": self.stream_url,
            "instrument metadata": (
                f"{self.rest_url}/v5/market/instruments-info?category={self.category}"
            ),
        }

    def subscribers(self, topic: str) -> int:
        """Connections subscribed to ``topic`` now."""
        return len(self._topics[topic].subscribers)

    def update_id(self, topic: str) -> int:
        """``u`` of the last message of ``topic``."""
        return self._topics[topic].update_id

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

    def send_error(self, message: str = _ERROR_MESSAGE) -> None:
        """Send a failed-request reply (``"success":false``) to every client."""
        reply = partial(self._reply, op="subscribe", req_id="", error=message)
        self._count(errors=self._to_all(reply))

    def _inject_into(self, fault: Fault, symbol: str) -> None:
        match fault:
            case Fault.DROP:
                self.drop_next(symbol)
            case Fault.RESTART:
                self.restart(symbol)

    def _announce(self, fault: Fault) -> None:
        if fault is Fault.ERROR:
            self.send_error()

    def _symbol_topics(self, symbol: str) -> list[_Topic]:
        if symbol not in self._books:
            raise KeyError(symbol)
        return [topic for topic in self._topics.values() if topic.book is self._books[symbol]]

    # -- market data -----------------------------------------------------------------

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        return [
            self._periodic(interval, partial(self._push, depth), 1)
            for depth, interval in PUSH_INTERVALS[self.category].items()
        ]

    def _step_market(self) -> None:
        for book in self._books.values():
            book.step()

    def _push(self, depth: int) -> None:
        """One push of every subscribed topic of ``depth``. O(depth) per topic."""
        silent = self._is_silent()
        for topic in self._topics.values():
            if topic.depth != depth or not (topic.subscribers or topic.awaiting_snapshot):
                continue
            ready = not silent and not self._is_held(topic.book.spec.symbol)
            if topic.awaiting_snapshot and ready:
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
                self._send(topic.subscribers, message)

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

    def _send_snapshot(self, topic: _Topic, clients: Collection[_Client]) -> None:
        """The published state of ``topic`` (what its other subscribers hold) to ``clients``."""
        message = self._message(topic, "snapshot", topic.bids.items(), topic.asks.items())
        self._send(clients, message)

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

    def _is_websocket_path(self, path: str) -> bool:
        return path == self.path

    def _rest_routes(self) -> Mapping[str, RestRoute]:
        return {"/v5/market/instruments-info": self._instruments_info}

    async def _instruments_info(self, query: Query) -> tuple[int, bytes]:
        """``instruments-info`` of this venue's category (another category lists
        nothing), in pages of ``limit`` with a ``cursor`` as Bybit pages them."""
        category = query.get("category", [""])[0]
        limit_text = query.get("limit", ["500"])[0]
        start_text = query.get("cursor", ["0"])[0]
        if not (limit_text.isdigit() and start_text.isdigit()):
            return 200, self._rest_reply(10001, "params error", {})
        listed = list(self.listed) if category == self.category else []
        start, limit = int(start_text), min(max(int(limit_text), 1), 1000)
        page = listed[start : start + limit]
        following = str(start + limit) if start + limit < len(listed) else ""
        result = {
            "category": category,
            "list": [self._instrument(spec) for spec in page],
            "nextPageCursor": following,
        }
        return 200, self._rest_reply(0, "OK", result)

    def _rest_reply(self, code: int, message: str, result: dict[str, Any]) -> bytes:
        return orjson.dumps(
            {
                "retCode": code,
                "retMsg": message,
                "result": result,
                "retExtInfo": {},
                "time": self._clock_ns() // 1_000_000,
            }
        )

    def _instrument(self, spec: SimSymbol) -> dict[str, Any]:
        """One ``instruments-info`` entry: a spot pair or a linear perpetual."""
        status = "Trading" if spec.status is TradingStatus.TRADING else "PreLaunch"
        if self.category is BybitCategory.SPOT:
            return {
                "symbol": spec.symbol,
                "baseCoin": spec.base,
                "quoteCoin": spec.quote,
                "innovation": "0",
                "status": status,
                "marginTrading": "none",
                "stTag": "0",
                "lotSizeFilter": {
                    "basePrecision": spec.lot,
                    "quotePrecision": "0.00000001",
                    "minOrderQty": spec.lot,
                    "maxOrderQty": "9000000",
                    "minOrderAmt": "1",
                    "maxOrderAmt": "4000000",
                },
                "priceFilter": {"tickSize": spec.tick},
                "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
            }
        return {
            "symbol": spec.symbol,
            "contractType": "LinearPerpetual",
            "status": status,
            "baseCoin": spec.base,
            "quoteCoin": spec.quote,
            "launchTime": "1585526400000",
            "deliveryTime": "0",
            "deliveryFeeRate": "",
            "priceScale": str(spec.price_decimals),
            "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
            "priceFilter": {"minPrice": spec.tick, "maxPrice": "1999999.80", "tickSize": spec.tick},
            "lotSizeFilter": {
                "maxOrderQty": "1190.000",
                "minOrderQty": spec.lot,
                "qtyStep": spec.lot,
                "postOnlyMaxOrderQty": "1190.000",
                "maxMktOrderQty": "500.000",
                "minNotionalValue": "5",
            },
            "unifiedMarginTrade": True,
            "fundingInterval": 480,
            "settleCoin": spec.quote,
            "copyTrading": "both",
            "upperFundingRate": "0.005",
            "lowerFundingRate": "-0.005",
            "isPreListing": False,
            "preListingInfo": None,
        }

    def _accept(self, connection: ServerConnection) -> _Client:
        return _Client(connection, str(uuid.uuid4()))

    def _forget(self, client: _Client) -> None:
        for name in client.topics:
            self._topics[name].subscribers.discard(client)
            self._topics[name].awaiting_snapshot.discard(client)
        client.topics.clear()

    def _on_message(self, client: _Client, message: str | bytes) -> None:
        """Answer one request; a new subscription's snapshot follows its reply."""
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            reply = self._reply(client, "", "", "error:request must be a JSON object")
            self._send([client], reply)
            return
        op = str(request.get("op", ""))
        req_id = str(request.get("req_id", ""))
        error = ""
        added: list[_Topic] = []
        if op == "ping":
            reply = self._reply(client, op, req_id, ret_msg="pong")
            self._send([client], reply)
            return
        if op in ("subscribe", "unsubscribe"):
            args = request.get("args")
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                error = "error:args must be a list of topics"
            elif self.category is BybitCategory.SPOT and len(args) > SPOT_TOPICS_PER_REQUEST:
                error = f"error:args size >{SPOT_TOPICS_PER_REQUEST}"
            elif op == "subscribe":
                error, added = self._subscribe(client, args)
            else:
                self._unsubscribe(client, args)
        else:
            error = f"error:unknown op {op!r}"
        ok_msg = "subscribe" if op == "subscribe" and self.category is BybitCategory.SPOT else ""
        reply = self._reply(client, op, req_id, error, ok_msg)
        self._send([client], reply)
        silent = self._is_silent()
        for topic in added:
            if silent or self._is_held(topic.book.spec.symbol):
                topic.awaiting_snapshot.add(client)
                continue
            if not topic.subscribers:
                # Nobody holds this topic's state: publish the current book (no message).
                # It is unchanged from now on: level 1 repeats it only 3 s from now.
                snapshot = topic.book.snapshot(topic.depth)
                topic.bids, topic.asks = dict(snapshot.bids), dict(snapshot.asks)
                topic.seq = topic.book.update_id
                topic.last_sent = time.monotonic()
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
