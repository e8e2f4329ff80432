"""The websocket wire protocol: client requests in, server messages out (JSON text frames).

Sans-I/O: ``parse_request`` turns one received frame into a typed request or raises
``RequestError`` with a stable ``ErrorCode``; the ``encode_*`` functions turn values into
the exact bytes of one server message (orjson, UTF-8, sent as text frames). Nothing here
touches a socket, the registry or a clock. docs/protocol.md is the user-facing contract.

Requests (``id`` is optional, an integer or a string, echoed in the reply)::

    {"op":"subscribe","id":1,"channel":"bbo","instruments":["binance:BTC-USDT"]}
    {"op":"subscribe","id":2,"channel":"book","instruments":["binance:BTC-USDT"],"depth":10}
    {"op":"subscribe","id":3,"channel":"nbbo","symbols":["BTC-USDT"]}
    {"op":"subscribe","id":4,"channel":"status"}
    {"op":"subscribe","id":5,"channel":"metrics"}
    {"op":"unsubscribe","id":6,"channel":"bbo","instruments":["binance:BTC-USDT"]}
    {"op":"auth","id":7,"token":"..."}
    {"op":"ping","id":8}
    {"op":"subscribe","id":9,"channel":"profit","account":"acct-1"}
    {"op":"position.open","id":10,"position":{"id":"p-1","instrument":"binance:BTC-USDT",
     "side":"buy","qty":"0.5","price":"43000.1"}}
    {"op":"position.close","id":11,"position_id":"p-1"}

Each op has one parser in ``PARSERS`` (the op table; a new op adds a parser there and a
case in ``publish.requests.RequestHandler.serve``). Unknown fields are ignored (forward
compatibility); fields of the wrong type are not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

from book.consolidated import ConsolidatedBbo
from book.fixed import format_fixed
from book.snapshot import BookSnapshot, Level
from book.status import InstrumentStatus
from publish.exceptions import RequestError
from publish.position import Position
from publish.value import value_class

RequestId = int | str | None
"""A request's ``id`` as sent by the client (``None`` when absent)."""


class Op(StrEnum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    AUTH = "auth"
    PING = "ping"
    POSITION_OPEN = "position.open"
    POSITION_CLOSE = "position.close"
    ADMIN_RESYNC = "admin.resync"
    ADMIN_RECONNECT = "admin.reconnect"


class Channel(StrEnum):
    """Subscribable channels. ``bbo``/``book`` are keyed by instrument, ``nbbo`` by
    canonical symbol; ``status`` and ``metrics`` are channel-wide."""

    BBO = "bbo"
    BOOK = "book"
    NBBO = "nbbo"
    STATUS = "status"
    METRICS = "metrics"
    PROFIT = "profit"


class KeyField(StrEnum):
    """The request/ack field that names a channel's keys, and so what its keys are."""

    INSTRUMENTS = "instruments"
    SYMBOLS = "symbols"
    ACCOUNT = "account"
    """One account (a string, not a list): the channel needs auth as that account."""


KEY_FIELDS: dict[Channel, str] = {
    Channel.BBO: KeyField.INSTRUMENTS.value,
    Channel.BOOK: KeyField.INSTRUMENTS.value,
    Channel.NBBO: KeyField.SYMBOLS.value,
}
"""The field that lists a keyed channel's keys; channels absent are channel-wide (or keyed
by account: ``ACCOUNT_CHANNELS``)."""

ACCOUNT_FIELD = KeyField.ACCOUNT.value
"""The request/ack field naming the one account of an account channel (its key)."""

ACCOUNT_CHANNELS: frozenset[Channel] = frozenset({Channel.PROFIT})
"""Channels keyed by one account, which always need auth as that account."""

MARKET_DATA: frozenset[Channel] = frozenset(Channel) - ACCOUNT_CHANNELS
"""Channels that need an authenticated connection only when the server says so (config)."""


def key_field(channel: Channel) -> KeyField | None:
    """How ``channel``'s keys are named (``None``: channel-wide)."""
    if channel in ACCOUNT_CHANNELS:
        return KeyField.ACCOUNT
    field = KEY_FIELDS.get(channel)
    return None if field is None else KeyField(field)


class ErrorCode(StrEnum):
    """Stable ``code`` of an ``error`` frame (and of HTTP error bodies).

    Never renamed, never reused for another meaning; new codes are appended.
    docs/protocol.md documents each one.
    """

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_INSTRUMENT = "unknown_instrument"
    TOO_LARGE = "too_large"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    NOT_FOUND = "not_found"
    NOT_LIVE = "not_live"
    UNKNOWN_SYMBOL = "unknown_symbol"
    RATE_LIMITED = "rate_limited"
    AUTH_REQUIRED = "auth_required"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    INVALID_POSITION = "invalid_position"
    DUPLICATE_POSITION = "duplicate_position"
    UNKNOWN_POSITION = "unknown_position"
    POSITION_PENDING = "position_pending"
    TOO_MANY_POSITIONS = "too_many_positions"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNKNOWN_VENUE = "unknown_venue"


class CloseCode(IntEnum):
    """Websocket close codes (4000-4999 is the application range) the server closes with.

    Never renumbered; docs/protocol.md documents each one (and the 1xxx codes of the
    websocket protocol itself that the server uses).
    """

    SLOW_CONSUMER = 4008
    """The client read too slowly: its write buffer stayed full past the time limit."""
    TOO_MANY_ERRORS = 4029
    """The client kept sending bad or rate-limited requests past its error budget."""


# -- requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """``subscribe`` or ``unsubscribe``; ``keys`` (deduplicated, in request order) are the
    instruments/symbols of a keyed channel and empty for a channel-wide one. ``depth``
    is the ``book`` levels per side asked for (``None``: not given)."""

    op: Op
    id: RequestId
    channel: Channel
    keys: tuple[str, ...] = ()
    depth: int | None = None


@dataclass(frozen=True, slots=True)
class AuthRequest:
    id: RequestId
    token: str


@dataclass(frozen=True, slots=True)
class PingRequest:
    id: RequestId


@value_class
class PositionOpenRequest:
    """``position.open``: the fields of ``position`` as sent, all strings (``qty`` and
    ``price`` are decimal text, never JSON numbers); their values are checked by
    ``publish.positions.PositionBook.open``."""

    id: RequestId
    position_id: str
    instrument: str
    side: str
    qty: str
    price: str


@value_class
class PositionCloseRequest:
    id: RequestId
    position_id: str


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """``admin.resync`` (``target`` is an instrument) or ``admin.reconnect`` (a venue)."""

    id: RequestId
    op: Op
    target: str

    @property
    def target_field(self) -> str:
        return "instrument" if self.op is Op.ADMIN_RESYNC else "venue"


Request = (
    SubscriptionRequest
    | AuthRequest
    | PingRequest
    | PositionOpenRequest
    | PositionCloseRequest
    | AdminRequest
)

RequestParser = Callable[[RequestId, dict[str, Any]], Request]
"""Builds one op's request from the decoded frame (``id`` already checked)."""


_ID_TYPES = (int, str)
"""What a request ``id`` may be (a tuple: ``int | str`` would build a union per call)."""


def parse_request(raw: str | bytes) -> Request:
    """One received frame -> a typed request; ``RequestError`` for anything else. O(len)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RequestError(ErrorCode.BAD_REQUEST, "a request must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and (
        not isinstance(request_id, _ID_TYPES) or isinstance(request_id, bool)
    ):
        raise RequestError(ErrorCode.BAD_REQUEST, "id must be an integer or a string")
    op = obj.get("op")
    if not isinstance(op, str):
        raise RequestError(ErrorCode.BAD_REQUEST, "op must be a string", request_id)
    parser = PARSERS.get(op)
    if parser is None:
        raise RequestError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:64]!r}", request_id)
    return parser(request_id, obj)


def _parse_ping(request_id: RequestId, obj: dict[str, Any]) -> PingRequest:
    return PingRequest(request_id)


def _parse_auth(request_id: RequestId, obj: dict[str, Any]) -> AuthRequest:
    token = obj.get("token")
    if not isinstance(token, str) or not token:
        raise RequestError(ErrorCode.BAD_REQUEST, "token must be a non-empty string", request_id)
    return AuthRequest(request_id, token)


_POSITION_OPEN_FIELDS = ("id", "instrument", "side", "qty", "price")
"""The fields of ``position.open``'s ``position``, in the order they are checked."""


def _parse_position_open(request_id: RequestId, obj: dict[str, Any]) -> PositionOpenRequest:
    position = obj.get("position")
    if not isinstance(position, dict):
        raise RequestError(ErrorCode.BAD_REQUEST, "position must be an object", request_id)
    fields = tuple(map(position.get, _POSITION_OPEN_FIELDS))
    position_id, instrument, side, qty, price = fields
    if not (
        isinstance(position_id, str)
        and isinstance(instrument, str)
        and isinstance(side, str)
        and isinstance(qty, str)
        and isinstance(price, str)
    ):
        # Amounts as JSON numbers would arrive as binary floats: refused, not rounded.
        name = next(
            name
            for name, value in zip(_POSITION_OPEN_FIELDS, fields, strict=True)
            if not isinstance(value, str)
        )
        raise RequestError(ErrorCode.BAD_REQUEST, f"position.{name} must be a string", request_id)
    # Positional: keywords through a class call cost a dict per request.
    return PositionOpenRequest(request_id, position_id, instrument, side, qty, price)


def _parse_admin_resync(request_id: RequestId, obj: dict[str, Any]) -> AdminRequest:
    return AdminRequest(request_id, Op.ADMIN_RESYNC, _admin_target(request_id, obj, "instrument"))


def _parse_admin_reconnect(request_id: RequestId, obj: dict[str, Any]) -> AdminRequest:
    return AdminRequest(request_id, Op.ADMIN_RECONNECT, _admin_target(request_id, obj, "venue"))


def _admin_target(request_id: RequestId, obj: dict[str, Any], field: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise RequestError(ErrorCode.BAD_REQUEST, f"{field} must be a non-empty string", request_id)
    return value


def _parse_position_close(request_id: RequestId, obj: dict[str, Any]) -> PositionCloseRequest:
    position_id = obj.get("position_id")
    if not isinstance(position_id, str):
        raise RequestError(ErrorCode.BAD_REQUEST, "position_id must be a string", request_id)
    return PositionCloseRequest(request_id, position_id)


def _parse_subscribe(request_id: RequestId, obj: dict[str, Any]) -> SubscriptionRequest:
    return _parse_subscription(Op.SUBSCRIBE, request_id, obj)


def _parse_unsubscribe(request_id: RequestId, obj: dict[str, Any]) -> SubscriptionRequest:
    return _parse_subscription(Op.UNSUBSCRIBE, request_id, obj)


def _parse_subscription(op: Op, request_id: RequestId, obj: dict[str, Any]) -> SubscriptionRequest:
    channel = obj.get("channel")
    if not isinstance(channel, str):
        raise RequestError(ErrorCode.BAD_REQUEST, "channel must be a string", request_id)
    try:
        known = Channel(channel)
    except ValueError:
        raise RequestError(
            ErrorCode.UNKNOWN_CHANNEL, f"unknown channel {channel[:64]!r}", request_id
        ) from None
    depth = None
    if known is Channel.BOOK and op is Op.SUBSCRIBE:
        depth = obj.get("depth")
        if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool)):
            raise RequestError(ErrorCode.BAD_REQUEST, "depth must be an integer", request_id)
    if known in ACCOUNT_CHANNELS:
        account = obj.get(ACCOUNT_FIELD)
        if not isinstance(account, str) or not account:
            raise RequestError(
                ErrorCode.BAD_REQUEST, f"{ACCOUNT_FIELD} must be a non-empty string", request_id
            )
        return SubscriptionRequest(op, request_id, known, (account,))
    field = KEY_FIELDS.get(known)
    if field is None:
        return SubscriptionRequest(op, request_id, known)
    keys = obj.get(field)
    if (
        not isinstance(keys, list)
        or not keys
        or not all(isinstance(key, str) and key for key in keys)
    ):
        raise RequestError(
            ErrorCode.BAD_REQUEST, f"{field} must be a non-empty list of strings", request_id
        )
    return SubscriptionRequest(op, request_id, known, tuple(dict.fromkeys(keys)), depth)


PARSERS: dict[str, RequestParser] = {
    Op.SUBSCRIBE: _parse_subscribe,
    Op.UNSUBSCRIBE: _parse_unsubscribe,
    Op.AUTH: _parse_auth,
    Op.PING: _parse_ping,
    Op.POSITION_OPEN: _parse_position_open,
    Op.POSITION_CLOSE: _parse_position_close,
    Op.ADMIN_RESYNC: _parse_admin_resync,
    Op.ADMIN_RECONNECT: _parse_admin_reconnect,
}
"""The op table: op name -> parser of its request."""


# -- server messages ------------------------------------------------------------------------


def _fixed_or_none(value: int | None) -> str | None:
    return None if value is None else format_fixed(value)


def _levels(levels: Sequence[Level]) -> list[tuple[str, str]]:
    return [(format_fixed(price), format_fixed(qty)) for price, qty in levels]


def encode_bbo(snapshot: BookSnapshot, ts_send: int) -> bytes:
    """The ``bbo`` message of ``snapshot`` (an empty side is ``null``).

    Four ``format_fixed`` + one ``orjson.dumps``: ~6 µs on the 2-core dev box, nearly all
    of it ``format_fixed``; paid once per change, never per subscriber.
    """
    return orjson.dumps(
        {
            "type": "bbo",
            "instrument": snapshot.instrument,
            "seq": snapshot.seq,
            "bid": _fixed_or_none(snapshot.bid),
            "bid_qty": _fixed_or_none(snapshot.bid_qty),
            "ask": _fixed_or_none(snapshot.ask),
            "ask_qty": _fixed_or_none(snapshot.ask_qty),
            "ts_event": snapshot.ts_event,
            "ts_recv": snapshot.ts_recv,
            "ts_send": ts_send,
        }
    )


def encode_book(snapshot: BookSnapshot, depth: int, ts_send: int) -> bytes:
    """The ``book`` message: the best ``depth`` levels per side, best first, as
    ``[price, qty]`` decimal strings. O(depth) formats; once per change and depth."""
    return orjson.dumps(
        {
            "type": "book",
            "instrument": snapshot.instrument,
            "seq": snapshot.seq,
            "depth": depth,
            "bids": _levels(snapshot.bids[:depth]),
            "asks": _levels(snapshot.asks[:depth]),
            "ts_event": snapshot.ts_event,
            "ts_recv": snapshot.ts_recv,
            "ts_send": ts_send,
        }
    )


def encode_nbbo(nbbo: ConsolidatedBbo, ts_send: int) -> bytes:
    """The ``nbbo`` message: the consolidated best bid/ask of a canonical symbol across
    live venues, with the venue of each side (``null`` sides when no venue quotes) and
    whether the market is normal, locked or crossed."""
    return orjson.dumps(
        {
            "type": "nbbo",
            "symbol": nbbo.symbol,
            "seq": nbbo.seq,
            "bid": _fixed_or_none(nbbo.bid),
            "bid_qty": _fixed_or_none(nbbo.bid_qty),
            "bid_venue": nbbo.bid_venue,
            "ask": _fixed_or_none(nbbo.ask),
            "ask_qty": _fixed_or_none(nbbo.ask_qty),
            "ask_venue": nbbo.ask_venue,
            "market": nbbo.market.value,
            "ts_event": nbbo.ts_event,
            "ts_recv": nbbo.ts_recv,
            "ts_send": ts_send,
        }
    )


def encode_status(status: InstrumentStatus) -> bytes:
    return orjson.dumps(
        {
            "type": "status",
            "instrument": status.instrument,
            "state": status.state.value,
            "reason": status.reason,
        }
    )


def encode_metrics(stats: Mapping[str, object], ts_send: int) -> bytes:
    """The ``metrics`` message: ``stats`` (any JSON-able mapping) plus type and ts_send."""
    return orjson.dumps({"type": "metrics", **stats, "ts_send": ts_send})


def encode_ack(request: SubscriptionRequest) -> bytes:
    """The ``ack`` of a (un)subscribe; a keyed channel's ack lists the request's keys, a
    ``book`` subscribe's the depth granted."""
    message: dict[str, object] = {
        "type": "ack",
        "id": request.id,
        "op": request.op.value,
        "channel": request.channel.value,
    }
    field = KEY_FIELDS.get(request.channel)
    if field is not None:
        message[field] = list(request.keys)
    if request.depth is not None:
        message["depth"] = request.depth
    if request.channel in ACCOUNT_CHANNELS:
        message[ACCOUNT_FIELD] = request.keys[0]
    return orjson.dumps(message)


def encode_admin_ack(request: AdminRequest) -> bytes:
    """The ``ack`` of an admin op: the op and its target, once the action has started."""
    return orjson.dumps(
        {
            "type": "ack",
            "id": request.id,
            "op": request.op.value,
            request.target_field: request.target,
        }
    )


def encode_position_ack(request_id: RequestId, op: Op, position: Position) -> bytes:
    """The ``ack`` of ``position.open``/``position.close``: the position as stored."""
    return orjson.dumps(
        {
            "type": "ack",
            "id": request_id,
            "op": op,  # str enums: orjson writes their text, as .value (a Python call) is
            "position": {
                "id": position.id,
                "account": position.account,
                "instrument": position.instrument,
                "side": position.side,
                "qty": format_fixed(position.qty),
                "price": format_fixed(position.entry_price),
                "opened_ts": position.opened_ts,
                "closed_ts": position.closed_ts,
            },
        }
    )


def encode_auth_ack(request_id: RequestId, account: str, expires: int) -> bytes:
    """The ``ack`` of ``auth``: the account the connection now acts for and when the token
    expires (ns since the epoch)."""
    return orjson.dumps(
        {
            "type": "ack",
            "id": request_id,
            "op": Op.AUTH.value,
            "account": account,
            "expires": expires,
        }
    )


def encode_error(code: ErrorCode, message: str, request_id: RequestId = None) -> bytes:
    return orjson.dumps({"type": "error", "id": request_id, "code": code.value, "message": message})


def encode_pong(request_id: RequestId) -> bytes:
    return orjson.dumps({"type": "pong", "id": request_id})


_FRAME_HEADERS: dict[int, bytes] = {length: bytes((0x81, length)) for length in range(126)}
"""Text frame headers by payload length, filled as lengths occur (at most 65,536)."""


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final websocket text frame of ``length`` bytes, as a
    server sends it (RFC 6455 5.2; no extension). One dict hit for a length seen before."""
    header = _FRAME_HEADERS.get(length)
    if header is None:
        if length < 1 << 16:
            header = _FRAME_HEADERS[length] = b"\x81\x7e" + length.to_bytes(2, "big")
        else:
            header = b"\x81\x7f" + length.to_bytes(8, "big")
    return header


def text_frames(messages: Iterable[bytes]) -> bytes:
    """Encoded messages as the bytes of one websocket text frame each, ready for the
    socket. Server frames are unmasked, so the same bytes serve every client. O(bytes)."""
    parts = []
    for message in messages:
        parts.append(text_frame_header(len(message)))
        parts.append(message)
    return b"".join(parts)


def encode_batch(messages: Iterable[bytes]) -> bytes:
    """Already-encoded messages as one JSON array (a ``?batch=1`` frame). O(total bytes)."""
    return b"[" + b",".join(messages) + b"]"
