"""A fake OKX v5 public websocket on loopback, speaking OKX's ``books`` protocol.

One ``websockets`` server serves ``/ws/v5/public`` as ``ws.okx.com:8443`` does for an
order book handler, so the real handler connects to it exactly as to OKX:

- ``{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}`` (optional
  ``"id"``, echoed) -> ``{"event":"subscribe","arg":{"channel":"books","instId":
  "BTC-USDT"},"connId":"0000000a"}``, then a full snapshot (``prevSeqId`` -1) at the next
  push, then every 100 ms the changes of that interval (only when something changed)::

    {"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{
      "asks":[["61800.3","0.52","0","3"]],"bids":[["61799.9","0","0","0"]],
      "ts":"1723161255308","checksum":-1390291542,"prevSeqId":5193344091,
      "seqId":5193344095}]}

  ``unsubscribe`` is acknowledged the same way and stops the channel. One seqId chain per
  instrument, the same on every connection: each message's ``prevSeqId`` is the
  ``seqId`` of the message before it (sent to someone or not).
- ``checksum`` is OKX's CRC32 of the best 25 levels (``feeds.okx.checksum``) over the
  strings sent; ``checksums=False`` sends 0 as OKX does since 2026. Numbers are printed
  the shortest way, as OKX does, or padded to the symbol's decimals
  (``padded_numbers=True``: ``"0.10000000"``), which only a handler that checksums the
  exchange's own strings can verify.
- ``login`` (``{"op":"login","args":[{apiKey, passphrase, timestamp, sign}]}``) ->
  ``{"event":"login","code":"0","msg":"","connId":..}``, after ``login_delay`` s; with
  ``credentials`` a wrong key, passphrase or signature -> ``{"event":"error","code":
  "60009","msg":"Login failed."}``. A tick-by-tick ``subscribe`` before the login is
  answered -> 60011 ``Please log in``.
- Text ``ping`` -> ``pong``. Errors as OKX words them: invalid JSON or request -> code
  60012, an unknown ``books`` instId -> 60018. Other channels are acknowledged and stay
  silent. Any other path gets HTTP 404.

Faults (counted in ``faults``): ``DROP`` (``drop_next``: a seqId gap), ``CHECKSUM``
(``corrupt_next_checksum``), ``RESTART`` (``reset_sequence``: seqId restarts low, as
after OKX maintenance: not a fault for a correct handler), ``DISCONNECT``, ``SILENCE``,
``MALFORMED``, ``ERROR`` (``send_error``) and ``SHUTDOWN`` (``send_notice``: 64008, OKX
is about to close the connection). ``hold_snapshots`` keeps new subscriptions of an
instrument waiting for their snapshot until released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeGuard

import orjson
from websockets.asyncio.server import ServerConnection

from book.fixed import format_fixed, format_fixed_places, parse_fixed
from book.snapshot import Level
from feeds.metadata import TradingStatus
from feeds.okx.adapter import PUBLIC_PATH
from feeds.okx.channels import (
    BOOK_CHANNELS,
    RULES,
    ChannelRules,
    OkxChannel,
    OkxCredentials,
    login_sign,
)
from feeds.okx.checksum import CHECKSUM_DEPTH, okx_checksum
from feeds.okx.parser import SERVICE_UPGRADE_NOTICE
from feeds.simulator.faults import Fault
from feeds.simulator.market import SimSymbol, SimulatedBook
from feeds.simulator.venue import LoopbackVenue, Query, RestRoute

PUSH_INTERVAL = 0.1
"""OKX pushes ``books`` changes every 100 ms."""
SNAPSHOT_DEPTH = 400
"""Levels per side of a ``books`` snapshot (and so the most a simulated book may hold)."""
_MALFORMED_FRAME = b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"upd'


@dataclass(eq=False, slots=True)
class _Client:
    connection: ServerConnection
    conn_id: str
    logged_in: bool = False


@dataclass(eq=False, slots=True)
class _ChannelFeed:
    """One book channel of one instrument and the state its subscribers hold."""

    channel: OkxChannel
    book: SimulatedBook
    lot: int
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)
    """The top levels the subscribers hold (as of the last message)."""
    subscribers: set[_Client] = field(default_factory=set)
    """Clients that had their snapshot and get every message."""
    waiting: set[_Client] = field(default_factory=set)
    """Subscribed clients whose snapshot goes out with the next push (not silent, not
    held by ``hold_snapshots``)."""
    seq_offset: int = 0
    """seqId = the book's update id - ``seq_offset`` (moved by ``reset_sequence``)."""
    last_seq: int = 0
    """seqId of the last message generated, sent to anyone or not."""
    drops_pending: int = 0
    corruptions_pending: int = 0
    resets_pending: int = 0
    snapshots_sent: int = 0

    @property
    def rules(self) -> ChannelRules:
        return RULES[self.channel]


class OkxSimulator(LoopbackVenue[_Client]):
    """An OKX v5 public ``books`` venue on loopback (async context manager).

    ``updates_per_second`` market steps per instrument run on an owned task until
    exit; ``pause``/``resume`` stop and restart the market. ``levels`` levels per side
    (at most 400); changes are pushed every ``push_interval`` s (OKX: 0.1); ``port=0``
    picks a free port (see ``ws_url``). ``clock_ns`` stamps ``ts`` (ms). Each push costs
    one JSON encode per instrument, one CRC32 over 50 levels and O(clients) buffer
    appends.
    """

    supported_faults = frozenset(Fault)
    malformed_frame = _MALFORMED_FRAME

    def __init__(
        self,
        *,
        symbols: Sequence[SimSymbol] | None = None,
        updates_per_second: float = 100.0,
        seed: int = 0,
        levels: int = 100,
        checksums: bool = True,
        padded_numbers: bool = False,
        push_interval: float = PUSH_INTERVAL,
        credentials: OkxCredentials | None = None,
        login_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if push_interval <= 0:
            raise ValueError("push_interval must be positive")
        if not 1 <= levels <= SNAPSHOT_DEPTH:
            raise ValueError(f"levels must be in [1, {SNAPSHOT_DEPTH}] (a books snapshot)")
        super().__init__(
            venue="okx",
            symbols=symbols,
            updates_per_second=updates_per_second,
            seed=seed,
            levels=levels,
            host=host,
            port=port,
            clock_ns=clock_ns,
        )
        self._push_interval = push_interval
        self._checksums = checksums
        self._padded = padded_numbers
        self._feeds = {
            (channel, symbol): _ChannelFeed(
                channel, book, parse_fixed(book.spec.lot), last_seq=book.update_id
            )
            for symbol, book in self._books.items()
            for channel in OkxChannel
        }
        self._credentials = credentials
        self._login_delay = login_delay
        self._pongs_sent = 0

    # -- public view -----------------------------------------------------------------

    @property
    def endpoints(self) -> Mapping[str, str]:
        return {
            "websocket": self.ws_url + PUBLIC_PATH,
            "instrument metadata": f"{self.rest_url}/api/v5/public/instruments?instType=SPOT",
        }

    @property
    def pongs_sent(self) -> int:
        """``pong`` replies to ``ping`` since start."""
        return self._pongs_sent

    def snapshots_sent(self, inst_id: str, channel: OkxChannel = OkxChannel.BOOKS) -> int:
        """Snapshots sent for ``inst_id`` on ``channel`` (one per (re)subscription)."""
        return self._feeds[channel, inst_id].snapshots_sent

    def seq_id(self, inst_id: str, channel: OkxChannel = OkxChannel.BOOKS) -> int:
        """The seqId of the last message generated for ``inst_id`` on ``channel``."""
        return self._feeds[channel, inst_id].last_seq

    def pause(self) -> None:
        """Stop the market and push every pending change (and snapshot) now.

        Afterwards no frame is pushed until ``resume``, and a client that applied every
        message holds exactly ``book(inst_id)``: the quiet point tests compare at.
        """
        super().pause()
        self._push_all()

    # -- faults ----------------------------------------------------------------------

    def drop_next(self, inst_id: str) -> None:
        """Withhold the next update of ``inst_id``: its subscribers see a seqId gap."""
        for feed in self._instrument_feeds(inst_id):
            feed.drops_pending += 1

    def corrupt_next_checksum(self, inst_id: str) -> None:
        """Send the next update of ``inst_id`` with a wrong (non-zero) checksum."""
        for feed in self._instrument_feeds(inst_id):
            feed.corruptions_pending += 1

    def reset_sequence(self, inst_id: str) -> None:
        """Restart ``inst_id``'s seqIds near 0 from the next update on, as OKX may after
        maintenance: ``seqId`` < ``prevSeqId`` once, then the chain goes on."""
        for feed in self._instrument_feeds(inst_id):
            feed.resets_pending += 1

    def _instrument_feeds(self, inst_id: str) -> list[_ChannelFeed]:
        if inst_id not in self._books:
            raise KeyError(inst_id)
        return [self._feeds[channel, inst_id] for channel in OkxChannel]

    def send_error(self, code: str = "60012", msg: str = "Invalid request") -> None:
        """Send an unsolicited ``{"event":"error",..}`` to every client."""
        self._count(errors=self._to_all(lambda client: _error(client, code, msg, None)))

    def send_notice(self) -> None:
        """Send OKX's 64008 notice (the connection will close for a service upgrade) to
        every client. Follow with ``disconnect_all`` to close them as OKX does."""
        msg = "The connection will soon be closed for a service upgrade. Please reconnect."

        def notice(client: _Client) -> bytes:
            return orjson.dumps(
                {
                    "event": "notice",
                    "code": SERVICE_UPGRADE_NOTICE,
                    "msg": msg,
                    "connId": client.conn_id,
                }
            )

        self._count(shutdown_notices=self._to_all(notice))

    def _inject_into(self, fault: Fault, inst_id: str) -> None:
        match fault:
            case Fault.DROP:
                self.drop_next(inst_id)
            case Fault.CHECKSUM:
                self.corrupt_next_checksum(inst_id)
            case Fault.RESTART:
                self.reset_sequence(inst_id)

    def _announce(self, fault: Fault) -> None:
        match fault:
            case Fault.ERROR:
                self.send_error()
            case Fault.SHUTDOWN:
                self.send_notice()

    # -- market data -----------------------------------------------------------------

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        intervals: dict[float, list[OkxChannel]] = {}
        for channel, rules in RULES.items():
            interval = self._push_interval if channel is OkxChannel.BOOKS else rules.push_interval
            intervals.setdefault(interval, []).append(channel)
        return [
            self._periodic(interval, partial(self._push_channels, channels), 1)
            for interval, channels in intervals.items()
        ]

    def _step_market(self) -> None:
        for book in self._books.values():
            book.step()

    def _push_all(self) -> None:
        self._push_channels(list(OkxChannel))

    def _push_channels(self, channels: Sequence[OkxChannel]) -> None:
        for feed in self._feeds.values():
            if feed.channel in channels and (feed.subscribers or feed.waiting):
                self._push(feed)

    def _push(self, feed: _ChannelFeed) -> None:
        """The message of what changed in the channel's view since the last one, to the
        subscribers; then snapshots to new subscriptions, continuing the same chain.
        O(depth) to compare the view."""
        silent = self._is_silent()
        inst_id = feed.book.spec.symbol
        rules = feed.rules
        top = feed.book.snapshot(rules.depth)
        bids, asks = dict(top.bids), dict(top.asks)
        changed_bids, changed_asks = _changes(feed.bids, bids), _changes(feed.asks, asks)
        if feed.subscribers and (changed_bids or changed_asks):
            prev_seq = feed.last_seq
            if feed.resets_pending:
                feed.resets_pending -= 1
                feed.seq_offset = top.update_id - 1
                self._count(restarts=1)
            feed.last_seq = top.update_id - feed.seq_offset
            feed.bids, feed.asks = bids, asks
            if silent:
                pass  # the message is lost: the next one shows the seqId gap
            elif feed.drops_pending:
                feed.drops_pending -= 1
                self._count(dropped=1)
            elif rules.incremental:
                frame = self._book_frame(feed, "update", changed_bids, changed_asks, prev_seq)
                self._send(feed.subscribers, frame)
            else:
                self._send(feed.subscribers, self._whole_frame(feed, top.bids, top.asks))
        if feed.waiting and not silent and not self._is_held(inst_id):
            if not feed.subscribers:  # nobody holds a view: the snapshot starts one
                feed.last_seq = top.update_id - feed.seq_offset
            feed.bids, feed.asks = bids, asks
            if rules.incremental:
                frame = self._book_frame(feed, "snapshot", top.bids, top.asks, -1)
            else:
                frame = self._whole_frame(feed, top.bids, top.asks)
            self._send(feed.waiting, frame)
            feed.snapshots_sent += len(feed.waiting)
            feed.subscribers |= feed.waiting
            feed.waiting.clear()

    def _book_frame(
        self,
        feed: _ChannelFeed,
        action: Literal["snapshot", "update"],
        bids: Iterable[Level],
        asks: Iterable[Level],
        prev_seq: int,
    ) -> bytes:
        """A ``books``-format message (snapshot or update, checksummed)."""
        spec = feed.book.spec
        checksum = self._checksum(feed) if self._checksums else 0
        if action == "update" and feed.corruptions_pending:
            feed.corruptions_pending -= 1
            self._count(corrupted_checksums=1)
            checksum = (self._checksum(feed) ^ 0x10) or 0x20
        data = {
            "asks": [self._row(spec, feed.lot, px, qty) for px, qty in sorted(asks)],
            "bids": [self._row(spec, feed.lot, px, qty) for px, qty in sorted(bids, reverse=True)],
            "ts": str(self._clock_ns() // 1_000_000),
            "checksum": checksum,
            "prevSeqId": prev_seq,
            "seqId": feed.last_seq,
        }
        message = {"arg": {"channel": feed.channel.value, "instId": spec.symbol}, "action": action}
        return orjson.dumps({**message, "data": [data]})

    def _whole_frame(
        self, feed: _ChannelFeed, bids: tuple[Level, ...], asks: tuple[Level, ...]
    ) -> bytes:
        """A ``books5``/``bbo-tbt`` message: the whole top of the book, no action."""
        spec = feed.book.spec
        data: dict[str, Any] = {
            "asks": [self._row(spec, feed.lot, px, qty) for px, qty in asks],
            "bids": [self._row(spec, feed.lot, px, qty) for px, qty in bids],
        }
        if feed.channel is OkxChannel.BOOKS5:
            data["instId"] = spec.symbol
        data |= {"ts": str(self._clock_ns() // 1_000_000), "seqId": feed.last_seq}
        arg = {"channel": feed.channel.value, "instId": spec.symbol}
        return orjson.dumps({"arg": arg, "data": [data]})

    def _checksum(self, feed: _ChannelFeed) -> int:
        """OKX's checksum of the channel's view, over the strings this venue prints."""
        spec = feed.book.spec
        bids = sorted(feed.bids.items(), reverse=True)[:CHECKSUM_DEPTH]
        asks = sorted(feed.asks.items())[:CHECKSUM_DEPTH]
        return okx_checksum(
            [(self._price(spec, px), self._size(spec, qty)) for px, qty in bids],
            [(self._price(spec, px), self._size(spec, qty)) for px, qty in asks],
        )

    def _row(self, spec: SimSymbol, lot: int, px: int, qty: int) -> list[str]:
        """``[price, size, "0", orders]``; a deleted level has no orders."""
        orders = 1 + (qty // lot) % 9 if qty else 0
        return [self._price(spec, px), self._size(spec, qty), "0", str(orders)]

    def _price(self, spec: SimSymbol, value: int) -> str:
        return (
            format_fixed_places(value, spec.price_decimals) if self._padded else format_fixed(value)
        )

    def _size(self, spec: SimSymbol, value: int) -> str:
        if self._padded and value:
            return format_fixed_places(value, spec.qty_decimals)
        return format_fixed(value)

    # -- websocket clients -----------------------------------------------------------

    def _is_websocket_path(self, path: str) -> bool:
        return path == PUBLIC_PATH

    def _rest_routes(self) -> Mapping[str, RestRoute]:
        return {"/api/v5/public/instruments": self._instruments}

    async def _instruments(self, query: Query) -> tuple[int, bytes]:
        """``public/instruments`` of one ``instType`` (``SPOT`` or ``SWAP``)."""
        kind = query.get("instType", [""])[0]
        if kind not in ("SPOT", "SWAP", "FUTURES", "OPTION", "MARGIN"):
            reply = {"code": "51000", "msg": "Parameter instType error", "data": []}
            return 200, orjson.dumps(reply)
        listed = [spec for spec in self.listed if _instrument_type(spec.symbol) == kind]
        return 200, orjson.dumps({"code": "0", "msg": "", "data": [_instrument(s) for s in listed]})

    def _accept(self, connection: ServerConnection) -> _Client:
        return _Client(connection, f"{self._connections_accepted:08x}")

    def _login(self, client: _Client, args: object, request_id: object) -> bytes:
        """Answer ``login``: with ``credentials`` the signature must be theirs (OKX's
        60009 otherwise); without, any well-formed login is accepted."""
        fields = ("apiKey", "passphrase", "timestamp", "sign")
        if not (
            isinstance(args, list)
            and len(args) == 1
            and isinstance(args[0], dict)
            and all(isinstance(args[0].get(name), str) for name in fields)
        ):
            return _error(client, "60012", "Invalid request: login args", request_id)
        login = args[0]
        expected = self._credentials
        if expected is not None and (
            login["apiKey"] != expected.api_key
            or login["passphrase"] != expected.passphrase
            or login["sign"] != login_sign(expected.secret, login["timestamp"])
        ):
            return _error(client, "60009", "Login failed.", request_id)
        client.logged_in = True
        reply: dict[str, Any] = {} if request_id is None else {"id": request_id}
        return orjson.dumps(
            reply | {"event": "login", "code": "0", "msg": "", "connId": client.conn_id}
        )

    def _answer_login(self, client: _Client, args: object, request_id: object) -> None:
        """``_login``'s answer, after ``login_delay`` (OKX verifies a login on its own
        time: until its answer, the connection is not logged in)."""
        if self._login_delay <= 0:
            self._send([client], self._login(client, args, request_id))
            return

        def answer() -> None:
            if client in self._clients:
                self._send([client], self._login(client, args, request_id))

        asyncio.get_running_loop().call_later(self._login_delay, answer)

    def _forget(self, client: _Client) -> None:
        for feed in self._feeds.values():
            feed.subscribers.discard(client)
            feed.waiting.discard(client)

    def _on_message(self, client: _Client, message: str | bytes) -> None:
        """Answer one client message as OKX does."""
        if message in ("ping", b"ping"):
            self._send([client], b"pong")
            self._pongs_sent += 1
            return
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._send([client], _error(client, "60012", f"Invalid request: {text}", None))
            return
        if not isinstance(request, dict):
            self._send([client], _error(client, "60012", f"Invalid request: {text}", None))
            return
        request_id, op, args = request.get("id"), request.get("op"), request.get("args")
        if op == "login":
            self._answer_login(client, args, request_id)
            return
        if op not in ("subscribe", "unsubscribe") or not _valid_args(args):
            self._send([client], _error(client, "60012", f"Invalid request: {text}", request_id))
            return
        for arg in args:
            channel, inst_id = arg["channel"], arg["instId"]
            is_book = channel in BOOK_CHANNELS
            feed = self._feeds.get((OkxChannel(channel), inst_id)) if is_book else None
            locked = is_book and RULES[OkxChannel(channel)].needs_login and not client.logged_in
            if locked and op == "subscribe":
                self._send([client], _error(client, "60011", "Please log in", request_id))
                continue
            if is_book and feed is None:
                msg = (
                    f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist. Please "
                    "use the correct URL, channel and parameters referring to API document."
                )
                self._send([client], _error(client, "60018", msg, request_id))
                continue
            reply: dict[str, Any] = {} if request_id is None else {"id": request_id}
            reply |= {
                "event": op,
                "arg": {"channel": channel, "instId": inst_id},
                "connId": client.conn_id,
            }
            self._send([client], orjson.dumps(reply))
            if feed is None:
                continue  # a channel this venue does not produce: acknowledged, silent
            feed.subscribers.discard(client)
            if op == "subscribe":
                feed.waiting.add(client)
            else:
                feed.waiting.discard(client)


def _instrument_type(inst_id: str) -> str:
    return "SWAP" if inst_id.endswith("-SWAP") else "SPOT"


def _instrument(spec: SimSymbol) -> dict[str, str]:
    """One entry of ``public/instruments``, as OKX lists a spot pair or a linear swap."""
    swap = _instrument_type(spec.symbol) == "SWAP"
    family = f"{spec.base}-{spec.quote}"
    state = "live" if spec.status is TradingStatus.TRADING else "suspend"
    return {
        "alias": "",
        "auctionEndTime": "",
        "baseCcy": "" if swap else spec.base,
        "category": "1",
        "ctMult": "1" if swap else "",
        "ctType": "linear" if swap else "",
        "ctVal": "0.01" if swap else "",
        "ctValCcy": spec.base if swap else "",
        "expTime": "",
        "instFamily": family if swap else "",
        "instId": spec.symbol,
        "instType": "SWAP" if swap else "SPOT",
        "lever": "100" if swap else "10",
        "listTime": "1606468572000",
        "lotSz": spec.lot,
        "maxIcebergSz": "9999999999",
        "maxLmtAmt": "20000000",
        "maxLmtSz": "9999999999",
        "maxMktAmt": "1000000",
        "maxMktSz": "10000",
        "maxStopSz": "10000",
        "maxTriggerSz": "9999999999",
        "maxTwapSz": "9999999999",
        "minSz": spec.lot,
        "optType": "",
        "quoteCcy": "" if swap else spec.quote,
        "ruleType": "normal",
        "settleCcy": spec.quote if swap else "",
        "state": state,
        "stk": "",
        "tickSz": spec.tick,
        "uly": family if swap else "",
    }


def _changes(old: dict[int, int], new: dict[int, int]) -> list[Level]:
    """Levels whose size differs between two views (0 = gone). O(n)."""
    changed = [(price, size) for price, size in new.items() if old.get(price) != size]
    changed += [(price, 0) for price in old if price not in new]
    return changed


def _valid_args(args: object) -> TypeGuard[list[dict[str, str]]]:
    return (
        isinstance(args, list)
        and bool(args)
        and all(
            isinstance(arg, dict)
            and isinstance(arg.get("channel"), str)
            and isinstance(arg.get("instId"), str)
            for arg in args
        )
    )


def _error(client: _Client, code: str, msg: str, request_id: object) -> bytes:
    reply: dict[str, Any] = {} if request_id is None else {"id": request_id}
    return orjson.dumps(
        reply | {"event": "error", "code": code, "msg": msg, "connId": client.conn_id}
    )
