"""A fake Binance exchange on loopback: spot, or USD-M futures (``futures=True``).

One ``websockets`` server on one port serves what ``stream.binance.com`` and
``api.binance.com`` (spot), or ``fstream.binance.com`` and ``fapi.binance.com``
(USD-M), serve to a depth feed handler, so the real handler connects to it exactly as
to Binance:

- ``/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker`` (combined; frames are
  ``{"stream":"btcusdt@depth@100ms","data":{...}}``) and ``/ws/<stream>`` or ``/ws``
  (raw; bare data frames), with the control messages ``SUBSCRIBE``, ``UNSUBSCRIBE``,
  ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY``/``GET_PROPERTY`` ``combined``.
- Diff depth, the changes of each push interval coalesced, only when something
  changed. Spot: ``<sym>@depth@100ms`` / ``<sym>@depth`` (100 ms / 1000 ms)::

    {"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,"u":50093239207,
     "b":[["55653.87000000","0.00000000"]],"a":[["61838.04000000","0.32332000"]]}

  USD-M: ``<sym>@depth@100ms`` / ``<sym>@depth`` / ``<sym>@depth@500ms`` (100 / 250 /
  500 ms), with ``T`` (the time of the last change) and ``pu`` (the previous event's
  ``u`` on that stream, sent or not), numbers printed to the contract's decimals::

    {"e":"depthUpdate","E":1723161256299,"T":1723161256298,"s":"BTCUSDT",
     "U":5123107832006,"u":5123107837557,"pu":5123107832005,
     "b":[["61496.50","0.010"],["61510.90","0.000"]],"a":[["61800.30","3.330"]]}

- ``<sym>@bookTicker``, real time: after every market step that changes the best bid
  or ask, ``u`` being the book's update id after that step (so it usually arrives
  before the depth message covering ``u``, as on Binance). Spot, then USD-M::

    {"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000",
     "a":"61837.64000000","A":"1.54698000"}
    {"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507",
     "a":"61800.30","A":"2.510","T":1723161256313,"E":1723161256313}

- ``GET /api/v3/depth?symbol=BTCUSDT&limit=N`` (spot; default 100, at most 5000) or
  ``GET /fapi/v1/depth?..`` (USD-M; default 500, at most 1000) on the same port:
  ``{"lastUpdateId":..,"bids":[[px,qty],..],"asks":[..]}`` (USD-M adds ``"E"`` and
  ``"T"`` after ``lastUpdateId``) at the *current* update id (which may fall inside the
  ``U..u`` span of a depth message not yet pushed), so a handler must buffer and bridge
  exactly as on Binance. Unknown symbol: HTTP 400 ``{"code":-1121,"msg":"Invalid
  symbol."}``.

Stream names are case-sensitive (lowercase symbol); a stream the simulator does not
produce is accepted and stays silent, as on Binance. Every client of a stream gets
the same bytes (``websockets.broadcast``: no per-client backpressure). Faults: ``DROP``
(``drop_next``), ``DISCONNECT``, ``SILENCE`` (also per symbol: ``mute``),
``MALFORMED`` and ``SHUTDOWN`` (``send_server_shutdown``); counted in ``faults``.
``hold_snapshots`` leaves a symbol's REST snapshots unanswered until released.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection

from book.fixed import format_fixed_places, parse_fixed
from book.snapshot import Level
from feeds.metadata import TradingStatus
from feeds.simulator.faults import Fault
from feeds.simulator.market import DiffWindow, SimSymbol
from feeds.simulator.venue import LoopbackVenue, Query, RestRoute

SPOT_DEPTH_STREAMS: Mapping[str, float] = {"depth": 1.0, "depth@100ms": 0.1}
"""Spot diff-depth stream suffix -> push interval in seconds."""
USDM_DEPTH_STREAMS: Mapping[str, float] = {"depth": 0.25, "depth@500ms": 0.5, "depth@100ms": 0.1}
"""USD-M diff-depth stream suffix -> push interval in seconds."""

_MALFORMED_FRAME = b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":17'


@dataclass(frozen=True, slots=True)
class _Market:
    """What differs between spot and USD-M."""

    depth_streams: Mapping[str, float]
    rest_path: str
    rest_default_limit: int
    rest_max_limit: int
    info_path: str
    weight_per_minute: int


_SPOT = _Market(SPOT_DEPTH_STREAMS, "/api/v3/depth", 100, 5000, "/api/v3/exchangeInfo", 6000)
_USDM = _Market(USDM_DEPTH_STREAMS, "/fapi/v1/depth", 500, 1000, "/fapi/v1/exchangeInfo", 2400)


@dataclass(eq=False, slots=True)
class _Client:
    connection: ServerConnection
    combined: bool
    streams: list[str] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _SymbolFeed:
    prefix: str
    """Lowercase symbol, the stream-name prefix."""
    windows: dict[str, DiffWindow]
    """Depth stream suffix -> changes not pushed yet."""
    changed_ms: int
    """When the book last changed (USD-M's transaction time ``T``)."""
    drops_pending: int = 0
    snapshots_served: int = 0
    muted_until: float = 0.0


class BinanceSimulator(LoopbackVenue[_Client]):
    """A Binance spot (or, ``futures=True``, USD-M) market-data venue on loopback.

    An async context manager. ``updates_per_second`` market steps per symbol (each one
    or more level changes) run on an owned task until exit; ``pause``/``resume`` stop
    and restart the market. ``symbols`` default to what ``feeds.simulator.catalog``
    lists for ``binance`` or ``binance-usdm``; ``levels`` levels per side; ``port=0``
    picks a free port (see ``ws_url``, ``rest_url``). ``clock_ns`` stamps ``E``/``T``
    (ms). Each push costs one JSON encode per stream plus O(clients) buffer appends.
    """

    supported_faults = frozenset(
        {Fault.DROP, Fault.DISCONNECT, Fault.SILENCE, Fault.MALFORMED, Fault.SHUTDOWN}
    )
    malformed_frame = _MALFORMED_FRAME

    def __init__(
        self,
        *,
        futures: bool = False,
        symbols: Sequence[SimSymbol] | None = None,
        updates_per_second: float = 100.0,
        seed: int = 0,
        levels: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(
            venue="binance-usdm" if futures else "binance",
            symbols=symbols,
            updates_per_second=updates_per_second,
            seed=seed,
            levels=levels,
            host=host,
            port=port,
            clock_ns=clock_ns,
        )
        self.futures = futures
        self._market = _USDM if futures else _SPOT
        started_ms = clock_ns() // 1_000_000
        self._feeds = {
            symbol: _SymbolFeed(
                symbol.lower(),
                {suffix: DiffWindow() for suffix in self._market.depth_streams},
                changed_ms=started_ms,
            )
            for symbol in self._books
        }
        self._subscribers: dict[str, set[_Client]] = {}

    # -- public view -----------------------------------------------------------------

    @property
    def endpoints(self) -> Mapping[str, str]:
        first = self._feeds[self.symbols[0]].prefix
        return {
            "websocket": f"{self.ws_url}/stream?streams={first}@depth@100ms/{first}@bookTicker",
            "REST depth": f"{self.rest_url}{self._market.rest_path}?symbol={self.symbols[0]}",
            "instrument metadata": f"{self.rest_url}{self._market.info_path}",
        }

    def snapshot_requests(self, symbol: str) -> int:
        """Successful REST depth snapshots served for ``symbol`` (resyncs count)."""
        return self._feeds[symbol].snapshots_served

    def pause(self) -> None:
        """Stop the market and push every pending depth change now.

        Afterwards no frame is sent until ``resume``, and a client that applied every
        depth message holds exactly ``book(symbol)``: the quiet point tests compare at.
        """
        super().pause()
        for suffix in self._market.depth_streams:
            self._push_depth(suffix)

    # -- faults ----------------------------------------------------------------------

    def drop_next(self, symbol: str) -> None:
        """Withhold the next diff-depth message of ``symbol`` that would be sent.

        The book moves on, so its subscribers see ``U`` > previous ``u`` + 1 (USD-M:
        ``pu`` != previous ``u``). When several update speeds are subscribed, the one
        that pushes first loses a message.
        """
        self._feeds[symbol].drops_pending += 1

    def mute(self, symbol: str, seconds: float) -> None:
        """Send nothing for ``symbol`` for ``seconds`` while the others keep streaming
        (one instrument's feed goes silent; its market moves on, so a gap follows)."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        feed = self._feeds[symbol]
        feed.muted_until = max(feed.muted_until, time.monotonic() + seconds)
        self._count(silences=1)

    def send_server_shutdown(self) -> None:
        """Send Binance's ``{"e":"serverShutdown","E":<ms>}`` notice to every client.

        It is a connection event, not stream data, so it is never wrapped in
        ``{"stream":..}``. Binance closes the connections some time later: follow with
        ``disconnect_all`` to do the same.
        """
        event = orjson.dumps({"e": "serverShutdown", "E": self._clock_ns() // 1_000_000})
        self._count(shutdown_notices=self._to_all(event))

    def _inject_into(self, fault: Fault, symbol: str) -> None:
        if fault is Fault.DROP:
            self.drop_next(symbol)

    def _announce(self, fault: Fault) -> None:
        if fault is Fault.SHUTDOWN:
            self.send_server_shutdown()

    # -- market data -----------------------------------------------------------------

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        return [
            self._periodic(interval, partial(self._push_depth, suffix), 1)
            for suffix, interval in self._market.depth_streams.items()
        ]

    def _step_market(self) -> None:
        """One step of every symbol; a bookTicker where the top changed. O(symbols * k)."""
        now_ms = self._clock_ns() // 1_000_000
        for symbol, feed in self._feeds.items():
            book = self._books[symbol]
            before = book.best()
            diff = book.step()
            feed.changed_ms = now_ms
            for window in feed.windows.values():
                window.add(diff)
            top = book.best()
            if top == before:
                continue
            stream = feed.prefix + "@bookTicker"
            if not self._subscribers.get(stream) or self._is_muted(feed):
                continue
            (bid, bid_qty), (ask, ask_qty) = top
            spec = book.spec
            price, qty = spec.price_decimals, spec.qty_decimals
            ticker: dict[str, object] = {"e": "bookTicker"} if self.futures else {}
            ticker |= {
                "u": book.update_id,
                "s": symbol,
                "b": format_fixed_places(bid, price),
                "B": format_fixed_places(bid_qty, qty),
                "a": format_fixed_places(ask, price),
                "A": format_fixed_places(ask_qty, qty),
            }
            if self.futures:
                ticker |= {"T": now_ms, "E": now_ms}
            self._publish(stream, orjson.dumps(ticker))

    def _push_depth(self, suffix: str) -> None:
        """Push the coalesced changes of every symbol on ``<sym>@<suffix>``."""
        for symbol, feed in self._feeds.items():
            diff = feed.windows[suffix].take()
            stream = f"{feed.prefix}@{suffix}"
            if diff is None or not self._subscribers.get(stream) or self._is_muted(feed):
                continue
            if feed.drops_pending:
                feed.drops_pending -= 1
                self._count(dropped=1)
                continue
            spec = self._books[symbol].spec
            event: dict[str, object] = {"e": "depthUpdate", "E": self._clock_ns() // 1_000_000}
            if self.futures:
                event["T"] = feed.changed_ms
            event |= {"s": symbol, "U": diff.first_update_id, "u": diff.last_update_id}
            if self.futures:
                # Windows are contiguous: the previous event of this stream ended at U - 1.
                event["pu"] = diff.first_update_id - 1
            event |= {"b": _levels_text(diff.bids, spec), "a": _levels_text(diff.asks, spec)}
            self._publish(stream, orjson.dumps(event))

    def _is_muted(self, feed: _SymbolFeed) -> bool:
        return self._is_silent() or time.monotonic() < feed.muted_until

    def _publish(self, stream: str, data: bytes) -> None:
        clients = self._subscribers.get(stream, ())
        raw = [client for client in clients if not client.combined]
        combined = [client for client in clients if client.combined]
        if raw:
            self._send(raw, data)
        if combined:
            self._send(combined, b'{"stream":"%s","data":%s}' % (stream.encode(), data))

    # -- websocket clients -----------------------------------------------------------

    def _accept(self, connection: ServerConnection) -> _Client:
        request = connection.request
        assert request is not None  # the handshake completed
        url = urlsplit(request.path)
        if url.path == "/stream":
            client = _Client(connection, combined=True)
            names = parse_qs(url.query).get("streams", [""])[0].split("/")
        else:
            client = _Client(connection, combined=False)
            names = [url.path.removeprefix("/ws").removeprefix("/")]
        self._subscribe(client, [name for name in names if name])
        return client

    def _on_message(self, client: _Client, message: str | bytes) -> None:
        self._send([client], self._control(client, message))

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

    def _forget(self, client: _Client) -> None:
        self._unsubscribe(client, list(client.streams))

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

    def _is_websocket_path(self, path: str) -> bool:
        return path in ("/ws", "/stream") or path.startswith("/ws/")

    def _rest_routes(self) -> Mapping[str, RestRoute]:
        return {
            self._market.rest_path: self._rest_snapshot,
            self._market.info_path: self._exchange_info,
        }

    async def _rest_snapshot(self, query: Query) -> tuple[int, bytes]:
        """A REST depth snapshot (a held symbol's once it is released)."""
        await self._released(query.get("symbol", [""])[0])
        return self._rest_depth(query)

    async def _exchange_info(self, query: Query) -> tuple[int, bytes]:
        """``exchangeInfo``: every listed symbol with its status, assets and filters."""
        return 200, orjson.dumps(
            {
                "timezone": "UTC",
                "serverTime": self._clock_ns() // 1_000_000,
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": self._market.weight_per_minute,
                    }
                ],
                "exchangeFilters": [],
                **({"assets": []} if self.futures else {}),
                "symbols": [self._symbol_info(spec) for spec in self.listed],
            }
        )

    def _symbol_info(self, spec: SimSymbol) -> dict[str, object]:
        price, qty = spec.price_decimals, spec.qty_decimals
        tick, lot = (
            format_fixed_places(parse_fixed(spec.tick), price),
            format_fixed_places(parse_fixed(spec.lot), qty),
        )
        filters = [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": format_fixed_places(parse_fixed("1000000"), price),
                "tickSize": tick,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": lot,
                "maxQty": format_fixed_places(parse_fixed("9000000"), qty),
                "stepSize": lot,
            },
        ]
        trading = spec.status is TradingStatus.TRADING
        if self.futures:
            return {
                "symbol": spec.symbol,
                "pair": spec.symbol,
                "contractType": "PERPETUAL",
                "deliveryDate": 4133404800000,
                "onboardDate": 1569398400000,
                "status": "TRADING" if trading else "SETTLING",
                "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000",
                "baseAsset": spec.base,
                "quoteAsset": spec.quote,
                "marginAsset": spec.quote,
                "pricePrecision": price,
                "quantityPrecision": qty,
                "baseAssetPrecision": 8,
                "quotePrecision": 8,
                "underlyingType": "COIN",
                "underlyingSubType": [],
                "triggerProtect": "0.0500",
                "liquidationFee": "0.012500",
                "marketTakeBound": "0.05",
                "filters": filters,
                "orderTypes": ["LIMIT", "MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            }
        return {
            "symbol": spec.symbol,
            "status": "TRADING" if trading else "BREAK",
            "baseAsset": spec.base,
            "baseAssetPrecision": 8,
            "quoteAsset": spec.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": trading,
            "isMarginTradingAllowed": False,
            "filters": filters,
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

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
        market = self._market
        limit_text = query.get("limit", [str(market.rest_default_limit)])[0]
        if not (limit_text.isascii() and limit_text.isdigit()):
            return 400, _rest_error(
                -1100,
                "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.",
            )
        book = self._books[symbol]
        snapshot = book.snapshot(min(max(int(limit_text), 1), market.rest_max_limit))
        feed.snapshots_served += 1
        body: dict[str, object] = {"lastUpdateId": snapshot.update_id}
        if self.futures:
            body |= {"E": self._clock_ns() // 1_000_000, "T": feed.changed_ms}
        body |= {
            "bids": _levels_text(snapshot.bids, book.spec),
            "asks": _levels_text(snapshot.asks, book.spec),
        }
        return 200, orjson.dumps(body)


def _levels_text(levels: tuple[Level, ...], spec: SimSymbol) -> list[list[str]]:
    price, qty = spec.price_decimals, spec.qty_decimals
    return [[format_fixed_places(px, price), format_fixed_places(size, qty)] for px, size in levels]


def _error(code: int, msg: str, request_id: int | str | None) -> bytes:
    return orjson.dumps({"code": code, "msg": msg, "id": request_id})


def _rest_error(code: int, msg: str) -> bytes:
    return orjson.dumps({"code": code, "msg": msg})
