"""The bus encoding: compact, versioned binary messages with exact fixed-point integers.

Every message starts with one header (little endian)::

    magic b"MB" | version u8 (1) | kind u8 | source u64 | bus_seq u64      20 bytes

``source`` names the ingest process that sent it (random at each start), ``bus_seq``
counts that source's messages per instrument (book and status together), so an edge
tells a lost or reordered message from the next one. Bodies by kind:

``BOOK``       seq, ts_event, ts_recv, ts_book (i64) | flags u8 | n_bids u16 | n_asks u16 |
               instrument (u8 length + UTF-8) | the integers: bid, bid_qty if flags&1, ask,
               ask_qty if flags&2, then n_bids and n_asks (price, qty) pairs. With
               flags&4 clear every integer is an i64; with it set (a value past 2**63)
               each is a u8 length + that many bytes of two's complement.
``STATUS``     ts i64 | state u8 | instrument (u8 length + UTF-8) | reason (u16 length + UTF-8)
``HEARTBEAT``  ts i64 | count u32 | count x (instrument (u8 length + UTF-8) | bus_seq u64):
               the source is alive, serves these instruments, and sent this many
               messages of each so far (an edge behind that count lost the tail).
``BYE``        empty: the source stops (edges fail over at once).
``HELLO``      empty: an edge joined; every source answers with a heartbeat.
``REQUEST``    count u16 | count x instrument: send me your state of these (0: all).
``STATE``      count u32 | count x (u32 length | a BOOK or STATUS message): the reply.

Decoding rejects anything else with a ``DecodeError`` saying what is wrong; it never
raises another exception on any input. Prices, quantities and timestamps are integers
end to end: no floats, no text on the hot path.

Cost: encoding a book is one ``struct.pack`` of the whole message (header, fields, the
instrument id and, for 25 levels, ~100 integers: ~3 us), one bytes object and no tuple
per level; decoding is one ``unpack_from`` and a ``zip`` (~3 us).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from itertools import chain

from book.instruments import split_instrument
from book.snapshot import BookSnapshot, Level
from book.status import InstrumentState, InstrumentStatus
from bus.exceptions import DecodeError

MAGIC = b"MB"
VERSION = 1
HEADER = struct.Struct("<2sBBQQ")
BOOK_FIXED = struct.Struct("<qqqqBHH")
STATUS_FIXED = struct.Struct("<qB")
U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")

HAS_BID = 1
HAS_ASK = 2
WIDE_INTS = 4
KNOWN_FLAGS = HAS_BID | HAS_ASK | WIDE_INTS

STATES = tuple(InstrumentState)
STATE_INDEX = {state: index for index, state in enumerate(STATES)}


class Kind(IntEnum):
    BOOK = 1
    STATUS = 2
    HEARTBEAT = 3
    BYE = 4
    HELLO = 5
    REQUEST = 6
    STATE = 7


@dataclass(frozen=True, slots=True)
class BookMessage:
    source: int
    bus_seq: int
    snapshot: BookSnapshot


@dataclass(frozen=True, slots=True)
class StatusMessage:
    source: int
    bus_seq: int
    status: InstrumentStatus


@dataclass(frozen=True, slots=True)
class Heartbeat:
    source: int
    ts: int
    instruments: dict[str, int]
    """Instrument -> how many messages of it the source has sent (its last bus_seq)."""


@dataclass(frozen=True, slots=True)
class Bye:
    source: int


@dataclass(frozen=True, slots=True)
class Hello:
    pass


@dataclass(frozen=True, slots=True)
class StateRequest:
    instruments: tuple[str, ...]
    """Empty: every instrument the source serves."""


@dataclass(frozen=True, slots=True)
class StateReply:
    source: int
    messages: tuple[BookMessage | StatusMessage, ...]


BusMessage = BookMessage | StatusMessage | Heartbeat | Bye | Hello | StateRequest | StateReply


# -- encoding ---------------------------------------------------------------------------


def _header(kind: Kind, source: int, bus_seq: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, source, bus_seq)


def _short_bytes(text: str, what: str) -> bytes:
    """``text`` as UTF-8 of at most 255 bytes (a ``ValueError`` naming ``what`` past that)."""
    data = text.encode()
    if len(data) > 255:
        raise ValueError(f"{what} longer than 255 bytes: {text[:40]!r}...")
    return data


def _short_text(text: str, what: str) -> bytes:
    data = _short_bytes(text, what)
    return U8.pack(len(data)) + data


@lru_cache(maxsize=512)
def _ints(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}q")


def encode_book(snapshot: BookSnapshot, *, source: int, bus_seq: int) -> bytes:
    """One ``BOOK`` message. O(levels): one ``struct.pack`` of the header, the fixed
    fields, the instrument id and every integer (the levels flattened in C, no tuple
    per level); the wide form only when a value passes 2**63."""
    name = _instrument_id(snapshot.instrument)
    flags = 0
    values: list[int] = []
    if snapshot.bid is not None:
        flags |= HAS_BID
        values += (snapshot.bid, snapshot.bid_qty or 0)
    if snapshot.ask is not None:
        flags |= HAS_ASK
        values += (snapshot.ask, snapshot.ask_qty or 0)
    values.extend(chain.from_iterable(snapshot.bids))
    values.extend(chain.from_iterable(snapshot.asks))
    try:
        return _book_layout(len(name), len(values)).pack(
            MAGIC,
            VERSION,
            Kind.BOOK,
            source,
            bus_seq,
            snapshot.seq,
            snapshot.ts_event,
            snapshot.ts_recv,
            snapshot.ts_book,
            flags,
            len(snapshot.bids),
            len(snapshot.asks),
            name,
            *values,
        )
    except struct.error:  # a value past 2**63: the rare wide form (or a bad header field)
        pass
    fixed = BOOK_FIXED.pack(
        snapshot.seq,
        snapshot.ts_event,
        snapshot.ts_recv,
        snapshot.ts_book,
        flags | WIDE_INTS,
        len(snapshot.bids),
        len(snapshot.asks),
    )
    return b"".join(
        (
            _header(Kind.BOOK, source, bus_seq),
            fixed,
            U8.pack(len(name)),
            name,
            *(_wide(value) for value in values),
        )
    )


@lru_cache(maxsize=4096)
def _instrument_id(instrument: str) -> bytes:
    return _short_bytes(instrument, "instrument id")


@lru_cache(maxsize=4096)
def _book_layout(name_size: int, count: int) -> struct.Struct:
    """A narrow ``BOOK`` message whole: header, fixed fields, the instrument id as a
    length-prefixed string (``p``), ``count`` i64s. Same bytes as packing each apart."""
    return struct.Struct(f"<{HEADER.format[1:]}{BOOK_FIXED.format[1:]}{name_size + 1}p{count}q")


def _wide(value: int) -> bytes:
    size = (value.bit_length() + 8) // 8  # room for the sign bit
    if size > 255:
        raise ValueError(f"integer of {value.bit_length()} bits does not fit the bus encoding")
    return U8.pack(size) + value.to_bytes(size, "little", signed=True)


def encode_status(status: InstrumentStatus, *, source: int, bus_seq: int) -> bytes:
    reason = status.reason.encode()[:65535]
    return b"".join(
        (
            _header(Kind.STATUS, source, bus_seq),
            STATUS_FIXED.pack(status.ts, STATE_INDEX[status.state]),
            _short_text(status.instrument, "instrument id"),
            U16.pack(len(reason)),
            reason,
        )
    )


def encode_heartbeat(source: int, ts: int, instruments: dict[str, int]) -> bytes:
    parts = [_header(Kind.HEARTBEAT, source, 0), I64.pack(ts), U32.pack(len(instruments))]
    for instrument, bus_seq in instruments.items():
        parts += (_short_text(instrument, "instrument id"), U64.pack(bus_seq))
    return b"".join(parts)


def encode_bye(source: int) -> bytes:
    return _header(Kind.BYE, source, 0)


def encode_hello() -> bytes:
    return _header(Kind.HELLO, 0, 0)


def encode_request(instruments: Sequence[str] = ()) -> bytes:
    if len(instruments) > 65535:
        raise ValueError("at most 65535 instruments per state request")
    parts = [_header(Kind.REQUEST, 0, 0), U16.pack(len(instruments))]
    parts += (_short_text(name, "instrument id") for name in instruments)
    return b"".join(parts)


def encode_state(source: int, messages: Iterable[bytes]) -> bytes:
    """A ``STATE`` reply holding already-encoded ``BOOK``/``STATUS`` messages."""
    items = list(messages)
    parts = [_header(Kind.STATE, source, 0), U32.pack(len(items))]
    for item in items:
        parts += (U32.pack(len(item)), item)
    return b"".join(parts)


# -- decoding ---------------------------------------------------------------------------


class _Reader:
    """Reads fields from a payload, turning every shortfall into a ``DecodeError``."""

    __slots__ = ("data", "offset", "what")

    def __init__(self, data: bytes, offset: int, what: str) -> None:
        self.data = data
        self.offset = offset
        self.what = what

    def take(self, layout: struct.Struct) -> tuple[int, ...]:
        end = self.offset + layout.size
        if end > len(self.data):
            raise DecodeError(
                f"{self.what} message truncated: needs {end} bytes, has {len(self.data)}"
            )
        values: tuple[int, ...] = layout.unpack_from(self.data, self.offset)
        self.offset = end
        return values

    def raw(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise DecodeError(
                f"{self.what} message truncated: needs {end} bytes, has {len(self.data)}"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def text(self, layout: struct.Struct, field: str) -> str:
        (size,) = self.take(layout)
        try:
            return self.raw(size).decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{self.what} message: {field} is not UTF-8") from exc

    def instrument(self) -> str:
        name = self.text(U8, "instrument id")
        try:
            split_instrument(name)
        except ValueError as exc:
            raise DecodeError(f"{self.what} message: {exc}") from exc
        return name

    def end(self) -> None:
        if self.offset != len(self.data):
            raise DecodeError(
                f"{self.what} message has {len(self.data) - self.offset} bytes past its end"
            )


def decode(payload: bytes) -> BusMessage:
    """Any bus message; ``DecodeError`` (naming the problem) for anything else."""
    if len(payload) < HEADER.size:
        raise DecodeError(
            f"bus message of {len(payload)} bytes is shorter than its {HEADER.size}-byte header"
        )
    magic, version, kind, source, bus_seq = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise DecodeError(f"not a marketcast bus message (starts with {bytes(magic)!r})")
    if version != VERSION:
        raise DecodeError(f"bus encoding version {version}; this node reads version {VERSION}")
    if kind == Kind.BOOK:
        return _book(payload, source, bus_seq)
    if kind == Kind.STATUS:
        return _status(payload, source, bus_seq)
    if kind == Kind.HEARTBEAT:
        return _heartbeat(payload, source)
    if kind in (Kind.BYE, Kind.HELLO):
        _Reader(payload, HEADER.size, Kind(kind).name.lower()).end()
        return Bye(source) if kind == Kind.BYE else Hello()
    if kind == Kind.REQUEST:
        return _request(payload)
    if kind == Kind.STATE:
        return _state(payload, source)
    raise DecodeError(f"unknown bus message kind {kind}")


def decode_book(payload: bytes) -> BookMessage:
    message = decode(payload)
    if not isinstance(message, BookMessage):
        raise DecodeError(f"expected a book message, got {type(message).__name__}")
    return message


def _book(payload: bytes, source: int, bus_seq: int) -> BookMessage:
    reader = _Reader(payload, HEADER.size, "book")
    seq, ts_event, ts_recv, ts_book, flags, n_bids, n_asks = reader.take(BOOK_FIXED)
    if flags & ~KNOWN_FLAGS:
        raise DecodeError(f"book message has unknown flags {flags:#x}")
    if seq < 0:
        raise DecodeError(f"book message has a negative seq {seq}")
    instrument = reader.instrument()
    count = 2 * ((flags & HAS_BID > 0) + (flags & HAS_ASK > 0) + n_bids + n_asks)
    if flags & WIDE_INTS:
        values: Sequence[int] = [_read_wide(reader) for _ in range(count)]
    else:
        values = reader.take(_ints(count))
    reader.end()
    at = 0
    bid = bid_qty = ask = ask_qty = None
    if flags & HAS_BID:
        bid, bid_qty = values[0], values[1]
        at = 2
    if flags & HAS_ASK:
        ask, ask_qty = values[at], values[at + 1]
        at += 2
    bids = _levels(values, at, n_bids)
    asks = _levels(values, at + 2 * n_bids, n_asks)
    return BookMessage(
        source,
        bus_seq,
        BookSnapshot(
            instrument, seq, ts_event, ts_recv, ts_book, bid, bid_qty, ask, ask_qty, bids, asks
        ),
    )


def _levels(values: Sequence[int], start: int, count: int) -> tuple[Level, ...]:
    flat = values[start : start + 2 * count]
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


def _read_wide(reader: _Reader) -> int:
    (size,) = reader.take(U8)
    if size == 0:
        raise DecodeError("book message has a zero-length integer")
    return int.from_bytes(reader.raw(size), "little", signed=True)


def _status(payload: bytes, source: int, bus_seq: int) -> StatusMessage:
    reader = _Reader(payload, HEADER.size, "status")
    ts, state = reader.take(STATUS_FIXED)
    if state >= len(STATES):
        raise DecodeError(f"status message has unknown state {state}")
    instrument = reader.instrument()
    reason = reader.text(U16, "reason")
    reader.end()
    return StatusMessage(source, bus_seq, InstrumentStatus(instrument, STATES[state], reason, ts))


def _heartbeat(payload: bytes, source: int) -> Heartbeat:
    reader = _Reader(payload, HEADER.size, "heartbeat")
    (ts,) = reader.take(I64)
    (count,) = reader.take(U32)
    instruments: dict[str, int] = {}
    for _ in range(count):
        name = reader.instrument()
        (instruments[name],) = reader.take(U64)
    reader.end()
    return Heartbeat(source, ts, instruments)


def _request(payload: bytes) -> StateRequest:
    reader = _Reader(payload, HEADER.size, "request")
    (count,) = reader.take(U16)
    names = tuple(reader.instrument() for _ in range(count))
    reader.end()
    return StateRequest(names)


def _state(payload: bytes, source: int) -> StateReply:
    reader = _Reader(payload, HEADER.size, "state")
    (count,) = reader.take(U32)
    messages: list[BookMessage | StatusMessage] = []
    for _ in range(count):
        (size,) = reader.take(U32)
        inner = decode(reader.raw(size))
        if not isinstance(inner, BookMessage | StatusMessage):
            raise DecodeError(f"state reply holds a {type(inner).__name__}")
        if inner.source != source:
            raise DecodeError("state reply holds a message of another source")
        messages.append(inner)
    reader.end()
    return StateReply(source, tuple(messages))
