"""The messages a marketcast server sends, as typed immutable values.

``decode(obj)`` turns one decoded JSON message into its dataclass (sans-I/O: no socket,
no clock). Prices, quantities and PnL are ``Decimal`` (exact, as sent: decimal strings),
an empty side is ``None``; timestamps are ``int`` nanoseconds since the epoch. Fields a
newer server adds are ignored; a message type this client does not know yet arrives as
``UnknownMessage`` rather than an error, so an older client keeps working.

``Disconnected`` and ``Reconnected`` are the client's own: it yields them when its
connection drops and when it is back (authenticated and resubscribed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, NamedTuple

from marketcast.exceptions import ProtocolError


class Level(NamedTuple):
    """One price level of a ``Book`` side."""

    price: Decimal
    qty: Decimal


@dataclass(frozen=True, slots=True)
class Bbo:
    """Best bid and ask of one instrument (``bbo`` channel); ``seq`` is the book version."""

    instrument: str
    seq: int
    bid: Decimal | None
    bid_qty: Decimal | None
    ask: Decimal | None
    ask_qty: Decimal | None
    ts_event: int
    ts_recv: int
    ts_send: int


@dataclass(frozen=True, slots=True)
class Book:
    """The top ``depth`` levels per side of one instrument, best first (``book``)."""

    instrument: str
    seq: int
    depth: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    ts_event: int
    ts_recv: int
    ts_send: int


@dataclass(frozen=True, slots=True)
class Nbbo:
    """The consolidated best bid and ask of a symbol across live venues (``nbbo``).
    ``market`` (``normal``/``locked``/``crossed``) is ``None`` from servers that do not
    send it."""

    symbol: str
    seq: int
    bid: Decimal | None
    bid_qty: Decimal | None
    bid_venue: str | None
    ask: Decimal | None
    ask_qty: Decimal | None
    ask_venue: str | None
    ts_event: int
    ts_recv: int
    ts_send: int
    market: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """An instrument's state: ``syncing``, ``live`` or ``stale``, and why (``status``)."""

    instrument: str
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class Profit:
    """Mark-to-market of one open position (``profit``); ``mark``/``pnl`` are ``None``
    while its side of the book is empty. ``seq`` is the book version of the mark."""

    account: str
    position_id: str
    instrument: str
    side: str
    qty: Decimal
    entry: Decimal
    mark: Decimal | None
    pnl: Decimal | None
    seq: int
    ts_send: int


@dataclass(frozen=True, slots=True)
class ProfitTotal:
    """The sum of an account's marked positions (``profit``); ``unmarked`` counts the
    positions without a mark."""

    account: str
    pnl: Decimal
    positions: int
    unmarked: int
    ts_send: int


@dataclass(frozen=True, slots=True)
class ProfitClosed:
    """The last message of a closed position (``profit``)."""

    account: str
    position_id: str
    instrument: str
    closed_ts: int | None
    ts_send: int


@dataclass(frozen=True, slots=True)
class Metrics:
    """The server's once-a-second metrics (``metrics``); ``values`` is read-only and
    holds everything but ``type`` and ``ts_send`` (see the server's docs/metrics.md)."""

    values: Mapping[str, Any]
    ts_send: int


@dataclass(frozen=True, slots=True)
class Position:
    """A position as the server stored it (the reply to ``open_position`` and
    ``close_position``); ``closed_ts`` is ``None`` while it is open."""

    id: str
    account: str
    instrument: str
    side: str
    qty: Decimal
    price: Decimal
    opened_ts: int
    closed_ts: int | None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection dropped (``reason``); until ``Reconnected``, nothing is received
    and the last values seen may be out of date."""

    reason: str
    ts: int


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The client is connected again, re-authenticated and resubscribed, after
    ``attempts`` connection attempts; what follows is current again. Messages older
    (by ``seq``) than ones already yielded are dropped, never yielded twice."""

    url: str
    attempts: int
    ts: int


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message type this version of the client does not know (a newer server's)."""

    type: str
    fields: Mapping[str, Any]


Message = (
    Bbo
    | Book
    | Nbbo
    | Status
    | Profit
    | ProfitTotal
    | ProfitClosed
    | Metrics
    | Disconnected
    | Reconnected
    | UnknownMessage
)
"""Everything ``async for message in client`` yields."""


def decode(obj: Mapping[str, Any]) -> Message:
    """The typed message of one decoded server message (not a reply: ``ack``, ``error``
    and ``pong`` are the client's business). ``ProtocolError`` if a field is missing or
    of the wrong kind."""
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(f"a server message without a type: {obj!r:.200}") from None
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return UnknownMessage(kind, MappingProxyType(dict(obj)))
    try:
        return decoder(obj)
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise ProtocolError(
            f"a {kind} message this client cannot read ({exc!r}): {obj!r:.200}"
        ) from None


def decode_position(obj: Mapping[str, Any]) -> Position:
    """The ``position`` of a position op's ``ack``."""
    try:
        return Position(
            id=_text(obj["id"]),
            account=_text(obj["account"]),
            instrument=_text(obj["instrument"]),
            side=_text(obj["side"]),
            qty=_amount(obj["qty"]),
            price=_amount(obj["price"]),
            opened_ts=_integer(obj["opened_ts"]),
            closed_ts=_optional_integer(obj.get("closed_ts")),
        )
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise ProtocolError(f"a position this client cannot read ({exc!r}): {obj!r:.200}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _optional_integer(value: Any) -> int | None:
    return None if value is None else _integer(value)


def _amount(value: Any) -> Decimal:
    # Amounts are decimal strings on the wire; a JSON number would already be a float.
    return Decimal(_text(value))


def _optional_amount(value: Any) -> Decimal | None:
    return None if value is None else _amount(value)


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _levels(value: Any) -> tuple[Level, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of levels, got {value!r}")
    return tuple(Level(_amount(price), _amount(qty)) for price, qty in value)


def _bbo(obj: Mapping[str, Any]) -> Bbo:
    return Bbo(
        instrument=_text(obj["instrument"]),
        seq=_integer(obj["seq"]),
        bid=_optional_amount(obj["bid"]),
        bid_qty=_optional_amount(obj["bid_qty"]),
        ask=_optional_amount(obj["ask"]),
        ask_qty=_optional_amount(obj["ask_qty"]),
        ts_event=_integer(obj["ts_event"]),
        ts_recv=_integer(obj["ts_recv"]),
        ts_send=_integer(obj["ts_send"]),
    )


def _book(obj: Mapping[str, Any]) -> Book:
    return Book(
        instrument=_text(obj["instrument"]),
        seq=_integer(obj["seq"]),
        depth=_integer(obj["depth"]),
        bids=_levels(obj["bids"]),
        asks=_levels(obj["asks"]),
        ts_event=_integer(obj["ts_event"]),
        ts_recv=_integer(obj["ts_recv"]),
        ts_send=_integer(obj["ts_send"]),
    )


def _nbbo(obj: Mapping[str, Any]) -> Nbbo:
    return Nbbo(
        symbol=_text(obj["symbol"]),
        seq=_integer(obj["seq"]),
        bid=_optional_amount(obj["bid"]),
        bid_qty=_optional_amount(obj["bid_qty"]),
        bid_venue=_optional_text(obj["bid_venue"]),
        ask=_optional_amount(obj["ask"]),
        ask_qty=_optional_amount(obj["ask_qty"]),
        ask_venue=_optional_text(obj["ask_venue"]),
        ts_event=_integer(obj["ts_event"]),
        ts_recv=_integer(obj["ts_recv"]),
        ts_send=_integer(obj["ts_send"]),
        market=_optional_text(obj.get("market")),
    )


def _status(obj: Mapping[str, Any]) -> Status:
    return Status(
        instrument=_text(obj["instrument"]),
        state=_text(obj["state"]),
        reason=_text(obj["reason"]),
    )


def _profit(obj: Mapping[str, Any]) -> Profit:
    return Profit(
        account=_text(obj["account"]),
        position_id=_text(obj["position_id"]),
        instrument=_text(obj["instrument"]),
        side=_text(obj["side"]),
        qty=_amount(obj["qty"]),
        entry=_amount(obj["entry"]),
        mark=_optional_amount(obj["mark"]),
        pnl=_optional_amount(obj["pnl"]),
        seq=_integer(obj["seq"]),
        ts_send=_integer(obj["ts_send"]),
    )


def _profit_total(obj: Mapping[str, Any]) -> ProfitTotal:
    return ProfitTotal(
        account=_text(obj["account"]),
        pnl=_amount(obj["pnl"]),
        positions=_integer(obj["positions"]),
        unmarked=_integer(obj["unmarked"]),
        ts_send=_integer(obj["ts_send"]),
    )


def _profit_closed(obj: Mapping[str, Any]) -> ProfitClosed:
    return ProfitClosed(
        account=_text(obj["account"]),
        position_id=_text(obj["position_id"]),
        instrument=_text(obj["instrument"]),
        closed_ts=_optional_integer(obj.get("closed_ts")),
        ts_send=_integer(obj["ts_send"]),
    )


def _metrics(obj: Mapping[str, Any]) -> Metrics:
    values = {name: value for name, value in obj.items() if name not in ("type", "ts_send")}
    return Metrics(MappingProxyType(values), _integer(obj["ts_send"]))


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Message]] = {
    "bbo": _bbo,
    "book": _book,
    "nbbo": _nbbo,
    "status": _status,
    "profit": _profit,
    "profit_total": _profit_total,
    "profit_closed": _profit_closed,
    "metrics": _metrics,
}
