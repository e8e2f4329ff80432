"""Normalized events produced by the sans-I/O venue parsers.

Exchange field names never leave their venue's module: parsers turn raw frames into
these events, prices and quantities already in fixed point (``book.fixed``).
"""

from __future__ import annotations

from dataclasses import dataclass

from book.snapshot import Level


@dataclass(frozen=True, slots=True)
class BookSnapshotEvent:
    """A whole book (or the venue's top-N) that replaces the current one.

    ``update_id`` is the venue's book sequence the snapshot is valid at (Binance
    ``lastUpdateId``, OKX ``seqId``, Bybit ``u``), ``None`` where the venue has none.
    """

    instrument: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    update_id: int | None = None
    ts_event: int = 0
    checksum: int | None = None


@dataclass(frozen=True, slots=True)
class BookDeltaEvent:
    """Absolute quantities for some levels (0 deletes) of one instrument.

    ``first_id``/``last_id`` are the range of venue update ids the message covers
    (Binance ``U``/``u``); ``prev_id`` is the id the previous message ended with where
    the venue says so (Binance USD-M ``pu``, OKX ``prevSeqId``).
    """

    instrument: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    first_id: int | None = None
    last_id: int | None = None
    prev_id: int | None = None
    ts_event: int = 0
    checksum: int | None = None


@dataclass(frozen=True, slots=True)
class TopOfBookEvent:
    """The venue's own best bid/ask (Binance ``bookTicker``): used to verify books."""

    instrument: str
    bid: int
    bid_qty: int
    ask: int
    ask_qty: int
    update_id: int | None = None
    ts_event: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatEvent:
    """The venue says the connection is alive (heartbeat, pong)."""


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A subscription ack or other non-data reply, kept for logs and status."""

    detail: str


@dataclass(frozen=True, slots=True)
class VenueErrorEvent:
    """The venue reported an error, or announced it will close the connection."""

    message: str
    instrument: str | None = None
    reconnect: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionGapEvent:
    """A message of the connection was lost but the venue cannot say whose (Coinbase's
    per-connection ``sequence_num``): every instrument of the connection is resynced."""

    detail: str


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """A frame that could not be understood. Counted and logged, never fatal."""

    reason: str
    raw: str


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A well-formed frame of a stream this handler does not use (trades, klines)."""


FeedEvent = (
    BookSnapshotEvent
    | BookDeltaEvent
    | TopOfBookEvent
    | HeartbeatEvent
    | ControlEvent
    | VenueErrorEvent
    | ConnectionGapEvent
    | MalformedEvent
    | IgnoredEvent
)
