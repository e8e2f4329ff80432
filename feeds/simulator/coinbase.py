"""A fake Coinbase Advanced Trade market-data venue on loopback.

One ``websockets`` server serves what ``wss://advanced-trade-ws.coinbase.com`` serves to a
``level2`` feed handler, so the real handler connects to it exactly as to Coinbase:

- A client must send a ``subscribe`` within ``subscribe_timeout`` (5 s) of connecting or
  it is closed. One channel per request (``channels`` lists are refused)::

    {"type":"subscribe","product_ids":["BTC-USD"],"channel":"level2"}
    {"type":"subscribe","channel":"heartbeats"}
    {"type":"unsubscribe","product_ids":["BTC-USD"],"channel":"level2"}

  Each request is answered with the connection's current ``subscriptions``; other known
  channels (``ticker``, ``market_trades``, ...) are accepted and stay silent. Bad
  requests get ``{"type":"error","message":".."}``.
- ``level2``: on subscribing, a ``snapshot`` event with the whole book; then one
  ``update`` event per market step (absolute sizes, "0" removes)::

    {"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:50.714964855Z",
     "sequence_num":4,"events":[{"type":"update","product_id":"BTC-USD","updates":[
       {"side":"offer","event_time":"2023-02-09T20:32:50.714964855Z",
        "price_level":"61800.07","new_quantity":"0"}]}]}

- ``heartbeats`` every ``heartbeat_interval`` (1 s) with a per-connection counter.

``sequence_num`` is one counter per connection, over every message it is sent. Faults:
``DROP`` (``drop_next``: the next update of a product is lost, a ``sequence_num`` gap on
each connection subscribed to it), ``DISCONNECT``, ``SILENCE`` (the messages of that
window are lost, numbers included), ``MALFORMED`` (an unnumbered truncated frame) and
``ERROR`` (``send_error``: an ``error`` message); all counted in ``faults``.
``hold_snapshots`` makes new ``level2`` subscriptions of a product wait for a release.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection

from book.fixed import format_fixed_places
from book.snapshot import Level
from feeds.metadata import TradingStatus
from feeds.simulator.faults import Fault
from feeds.simulator.market import SimSymbol, SimulatedBook
from feeds.simulator.venue import LoopbackVenue, Query, RestRoute

_LEVEL2 = "level2"
_HEARTBEATS = "heartbeats"
_SILENT_CHANNELS = frozenset(
    {"candles", "status", "ticker", "ticker_batch", "market_trades", "user"}
    | {"futures_balance_summary"}
)
"""Channels accepted and left silent: this venue only simulates order books."""
_PRODUCT_CHANNELS = frozenset({_LEVEL2, "candles", "status", "ticker", "market_trades"})
"""Channels a subscribe must name products for."""
_MALFORMED_FRAME = b'{"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:5'
_ERROR_MESSAGE = "internal error"


@dataclass(eq=False, slots=True)
class _Client:
    connection: ServerConnection
    sequence_num: int = 0
    channels: dict[str, list[str]] = field(default_factory=dict)
    """Channel -> product ids, as the ``subscriptions`` message lists them."""
    heartbeat_counter: int = 0


@dataclass(eq=False, slots=True)
class _ProductFeed:
    book: SimulatedBook
    subscribers: set[_Client] = field(default_factory=set)
    waiting: set[_Client] = field(default_factory=set)
    """Subscribed while ``hold_snapshots`` held the product: no snapshot, no updates yet."""
    drops_pending: int = 0


class RequestError(ValueError):
    """A client request Coinbase would refuse (its text goes back as ``message``)."""


class CoinbaseSimulator(LoopbackVenue[_Client]):
    """A Coinbase Advanced Trade market-data venue on loopback (async context manager).

    ``updates_per_second`` market steps per product, each pushed at once to the
    product's ``level2`` subscribers; ``levels`` levels per side; ``port=0`` picks a free
    port (``ws_url``). ``clock_ns`` stamps ``timestamp``. Each push costs one JSON encode
    of the events plus one small envelope per subscribed connection (its own number).
    """

    supported_faults = frozenset(
        {Fault.DROP, Fault.DISCONNECT, Fault.SILENCE, Fault.MALFORMED, Fault.ERROR}
    )
    malformed_frame = _MALFORMED_FRAME

    def __init__(
        self,
        *,
        symbols: Sequence[SimSymbol] | None = None,
        updates_per_second: float = 100.0,
        seed: int = 0,
        levels: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        subscribe_timeout: float = 5.0,
        heartbeat_interval: float = 1.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if subscribe_timeout <= 0 or heartbeat_interval <= 0:
            raise ValueError("subscribe_timeout and heartbeat_interval must be positive")
        super().__init__(
            venue="coinbase",
            symbols=symbols,
            updates_per_second=updates_per_second,
            seed=seed,
            levels=levels,
            host=host,
            port=port,
            clock_ns=clock_ns,
        )
        self._subscribe_timeout = subscribe_timeout
        self._heartbeat_interval = heartbeat_interval
        self._feeds = {product: _ProductFeed(book) for product, book in self._books.items()}

    # -- public view -----------------------------------------------------------------

    @property
    def endpoints(self) -> Mapping[str, str]:
        return {
            "websocket": self.ws_url,
            "instrument metadata": f"{self.rest_url}/api/v3/brokerage/market/products",
        }

    def subscribers(self, product: str) -> int:
        """Connections subscribed to ``product``'s level2 now."""
        return len(self._feeds[product].subscribers)

    # -- faults ----------------------------------------------------------------------

    def drop_next(self, product: str) -> None:
        """Lose the next ``level2`` update of ``product``: each subscribed connection's
        ``sequence_num`` skips one number, and its book misses those changes."""
        self._feeds[product].drops_pending += 1

    def send_error(self, message: str = _ERROR_MESSAGE) -> None:
        """Send ``{"type":"error","message":..}`` (unnumbered) to every client."""
        self._count(errors=self._to_all(_error(message)))

    def _inject_into(self, fault: Fault, product: str) -> None:
        if fault is Fault.DROP:
            self.drop_next(product)

    def _announce(self, fault: Fault) -> None:
        if fault is Fault.ERROR:
            self.send_error()

    # -- market data -----------------------------------------------------------------

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._heartbeats()]

    def _step_market(self) -> None:
        """One step of every product, pushed to its subscribers. O(products * k)."""
        for product, feed in self._feeds.items():
            diff = feed.book.step()
            if not feed.subscribers:
                continue
            lost = False
            if feed.drops_pending:
                feed.drops_pending -= 1
                self._count(dropped=len(feed.subscribers))
                lost = True
            events = self._book_events("update", product, diff.bids, diff.asks)
            for client in feed.subscribers:
                self._send_numbered(client, b"l2_data", events, lost=lost)

    async def _heartbeats(self) -> None:
        """Every connection subscribed to ``heartbeats`` gets one per interval."""
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            now = self._clock_ns()
            current_time = _go_time(now).encode()
            for client in list(self._clients):
                if _HEARTBEATS not in client.channels:
                    continue
                client.heartbeat_counter += 1
                event = b'[{"current_time":"%s","heartbeat_counter":%d}]' % (
                    current_time,
                    client.heartbeat_counter,
                )
                self._send_numbered(client, b"heartbeats", event)

    def _book_events(
        self, kind: str, product: str, bids: tuple[Level, ...], asks: tuple[Level, ...]
    ) -> bytes:
        spec = self._feeds[product].book.spec
        when = _rfc3339(self._clock_ns())
        updates = [
            {
                "side": side,
                "event_time": when,
                "price_level": format_fixed_places(price, spec.price_decimals),
                "new_quantity": format_fixed_places(qty, spec.qty_decimals) if qty else "0",
            }
            for side, levels in (("bid", bids), ("offer", asks))
            for price, qty in levels
        ]
        return orjson.dumps([{"type": kind, "product_id": product, "updates": updates}])

    def _send_numbered(
        self, client: _Client, channel: bytes, events: bytes, *, lost: bool = False
    ) -> None:
        """Number one message for ``client`` and write it, unless it is lost (dropped or
        silent): a lost message still takes its number."""
        number = client.sequence_num
        client.sequence_num += 1
        if lost or self._is_silent():
            return
        frame = (
            b'{"channel":"%s","client_id":"","timestamp":"%s","sequence_num":%d,"events":%s}'
            % (
                channel,
                _rfc3339(self._clock_ns()).encode(),
                number,
                events,
            )
        )
        self._send([client], frame)

    # -- websocket clients -----------------------------------------------------------

    def _rest_routes(self) -> Mapping[str, RestRoute]:
        return {"/api/v3/brokerage/market/products": self._products}

    async def _products(self, query: Query) -> tuple[int, bytes]:
        """``market/products``: every listed product."""
        products = [_product(spec) for spec in self.listed]
        return 200, orjson.dumps({"products": products, "num_products": len(products)})

    def _accept(self, connection: ServerConnection) -> _Client:
        return _Client(connection)

    async def _converse(self, client: _Client) -> None:
        """As Coinbase: a client that does not subscribe in time is closed."""
        messages = aiter(client.connection)
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                while not client.channels:
                    self._on_message(client, await anext(messages))
        except TimeoutError:
            reason = f"no subscribe message within {self._subscribe_timeout:g} seconds"
            await client.connection.close(1000, reason)
            return
        except StopAsyncIteration:
            return
        async for message in messages:
            self._on_message(client, message)

    def _forget(self, client: _Client) -> None:
        for product in client.channels.get(_LEVEL2, ()):
            self._feeds[product].subscribers.discard(client)
            self._feeds[product].waiting.discard(client)
        client.channels.clear()

    def _on_message(self, client: _Client, message: str | bytes) -> None:
        """Answer one client request, in order, on the client's numbered stream."""
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._send([client], _error("malformed JSON"))
            return
        try:
            new_products = self._apply(client, request)
        except RequestError as exc:
            self._send([client], _error(str(exc)))
            return
        subscriptions = orjson.dumps([{"subscriptions": client.channels}])
        self._send_numbered(client, b"subscriptions", subscriptions)
        for product in new_products:
            feed = self._feeds[product]
            if self._is_held(product):
                feed.waiting.add(client)
            else:
                self._start_stream(client, product, feed)

    def _start_stream(self, client: _Client, product: str, feed: _ProductFeed) -> None:
        """The whole book, then every update."""
        snapshot = feed.book.snapshot()
        events = self._book_events("snapshot", product, snapshot.bids, snapshot.asks)
        self._send_numbered(client, b"l2_data", events)
        feed.subscribers.add(client)

    def _on_release(self, product: str) -> None:
        feed = self._feeds[product]
        waiting = list(feed.waiting)
        feed.waiting.clear()
        for client in waiting:
            self._start_stream(client, product, feed)

    def _apply(self, client: _Client, request: Any) -> list[str]:
        """Apply a subscribe/unsubscribe; returns the products newly on ``level2`` (the
        caller starts their streams)."""
        if not isinstance(request, dict):
            raise RequestError("malformed request: expected a JSON object")
        kind = request.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            raise RequestError(f"unknown message type {kind!r}")
        channel = request.get("channel")
        if not isinstance(channel, str):
            raise RequestError("a request names exactly one channel in 'channel'")
        if channel not in _SILENT_CHANNELS | {_LEVEL2, _HEARTBEATS}:
            raise RequestError(f"unknown channel {channel!r}")
        products = request.get("product_ids", [])
        if not isinstance(products, list) or not all(isinstance(p, str) for p in products):
            raise RequestError("product_ids must be a list of product ids")
        unknown = [p for p in products if p not in self._feeds]
        if unknown:
            raise RequestError(f"failure to subscribe: unknown product ids {unknown}")
        if channel == _HEARTBEATS:
            products = [_HEARTBEATS]
        elif channel in _PRODUCT_CHANNELS and not products and kind == "subscribe":
            raise RequestError(f"failure to subscribe: channel {channel} needs product_ids")
        current = client.channels.get(channel, [])
        if kind == "subscribe":
            added = [p for p in dict.fromkeys(products) if p not in current]
            client.channels[channel] = current + added
        else:
            added = []
            kept = [p for p in current if products and p not in products]
            dropped = [p for p in current if p not in kept]
            if kept:
                client.channels[channel] = kept
            else:
                client.channels.pop(channel, None)
            if channel == _LEVEL2:
                for product in dropped:
                    self._feeds[product].subscribers.discard(client)
                    self._feeds[product].waiting.discard(client)
        return added if channel == _LEVEL2 else []


def _product(spec: SimSymbol) -> dict[str, Any]:
    """One entry of ``market/products``, as Coinbase lists a spot product."""
    trading = spec.status is TradingStatus.TRADING
    return {
        "product_id": spec.symbol,
        "price": "",
        "price_percentage_change_24h": "",
        "volume_24h": "",
        "volume_percentage_change_24h": "",
        "base_increment": spec.lot,
        "quote_increment": spec.tick,
        "quote_min_size": "1",
        "quote_max_size": "150000000",
        "base_min_size": spec.lot,
        "base_max_size": "3400",
        "base_name": spec.base,
        "quote_name": spec.quote,
        "watched": False,
        "is_disabled": False,
        "new": False,
        "status": "online",
        "cancel_only": False,
        "limit_only": False,
        "post_only": False,
        "trading_disabled": not trading,
        "auction_mode": False,
        "product_type": "SPOT",
        "quote_currency_id": spec.quote,
        "base_currency_id": spec.base,
        "fcm_trading_session_details": None,
        "mid_market_price": "",
        "alias": "",
        "alias_to": [],
        "base_display_symbol": spec.base,
        "quote_display_symbol": spec.quote,
        "view_only": False,
        "price_increment": spec.tick,
        "display_name": spec.symbol,
        "product_venue": "CBE",
        "approximate_quote_24h_volume": "",
    }


def _error(message: str) -> bytes:
    return orjson.dumps({"type": "error", "message": message})


def _rfc3339(ns: int) -> str:
    """ns since the epoch -> ``"2023-02-09T20:32:50.714964855Z"``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def _go_time(ns: int) -> str:
    """ns -> Go's ``time.String`` form, as heartbeats carry it."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d %H:%M:%S}.{fraction:09d} +0000 UTC"
