"""The bus encoding: every message survives a round trip exactly; anything else is a
``DecodeError`` that says what is wrong, never another exception."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from bus.codec import (
    BookMessage,
    Bye,
    Heartbeat,
    Hello,
    StateReply,
    StateRequest,
    StatusMessage,
    decode,
    encode_book,
    encode_bye,
    encode_heartbeat,
    encode_hello,
    encode_request,
    encode_state,
    encode_status,
)
from bus.exceptions import DecodeError

SOURCE = 0x1234_5678_9ABC_DEF0

instruments = st.sampled_from(
    ["binance:BTC-USDT", "okx:ETH-USDT", "binance-usdm:BTC-USDT-PERP", "kraken:BTC-USD"]
)
# Fixed point at 10**-12: a 1e9 quantity is 1e21, past 64 bits (the wide form).
values = st.one_of(
    st.integers(min_value=1, max_value=10**18), st.integers(min_value=1, max_value=10**30)
)
levels = st.lists(st.tuples(values, values), max_size=30).map(tuple)
timestamps = st.integers(min_value=0, max_value=2**62)


@st.composite
def snapshots(draw: st.DrawFn) -> BookSnapshot:
    bids = draw(levels)
    asks = draw(levels)
    has_bid = draw(st.booleans())
    has_ask = draw(st.booleans())
    return BookSnapshot(
        draw(instruments),
        draw(st.integers(min_value=0, max_value=2**62)),
        draw(timestamps),
        draw(timestamps),
        draw(timestamps),
        draw(values) if has_bid else None,
        draw(values) if has_bid else None,
        draw(values) if has_ask else None,
        draw(values) if has_ask else None,
        bids,
        asks,
    )


statuses = st.builds(
    InstrumentStatus,
    instruments,
    st.sampled_from(list(InstrumentState)),
    st.text(max_size=200),
    timestamps,
)


@given(snapshots(), st.integers(min_value=0, max_value=2**64 - 1))
def test_book_round_trip(snapshot: BookSnapshot, bus_seq: int) -> None:
    payload = encode_book(snapshot, source=SOURCE, bus_seq=bus_seq)
    assert decode(payload) == BookMessage(SOURCE, bus_seq, snapshot)


@given(statuses, st.integers(min_value=0, max_value=2**64 - 1))
def test_status_round_trip(status: InstrumentStatus, bus_seq: int) -> None:
    payload = encode_status(status, source=SOURCE, bus_seq=bus_seq)
    assert decode(payload) == StatusMessage(SOURCE, bus_seq, status)


def test_the_other_kinds_round_trip() -> None:
    book = BookSnapshot("sim:BTC-USDT", 7, 1, 2, 3, 10, 1, 11, 2, ((10, 1),), ((11, 2),))
    status = InstrumentStatus("sim:BTC-USDT", InstrumentState.LIVE, "in sync", 5)
    beat = {"sim:BTC-USDT": 9, "sim:ETH-USDT": 0}
    assert decode(encode_heartbeat(SOURCE, 42, beat)) == Heartbeat(SOURCE, 42, beat)
    assert decode(encode_bye(SOURCE)) == Bye(SOURCE)
    assert decode(encode_hello()) == Hello()
    assert decode(encode_request(["sim:BTC-USDT"])) == StateRequest(("sim:BTC-USDT",))
    assert decode(encode_request()) == StateRequest(())
    reply = encode_state(
        SOURCE,
        [
            encode_book(book, source=SOURCE, bus_seq=9),
            encode_status(status, source=SOURCE, bus_seq=9),
        ],
    )
    assert decode(reply) == StateReply(
        SOURCE, (BookMessage(SOURCE, 9, book), StatusMessage(SOURCE, 9, status))
    )


def test_a_top_of_book_only_snapshot_is_compact() -> None:
    book = BookSnapshot("binance:BTC-USDT", 1, 1, 2, 3, 10**17, 5 * 10**11, 10**17 + 10**10, 10**12)
    payload = encode_book(book, source=SOURCE, bus_seq=1)
    # header, seq and timestamps, flags and counts, the id, four i64: no text numbers
    assert len(payload) == 20 + 37 + 1 + len(book.instrument) + 4 * 8
    assert decode(payload) == BookMessage(SOURCE, 1, book)


def test_an_instrument_id_of_255_utf8_bytes_round_trips_and_a_longer_one_is_refused() -> None:
    longest = "x:" + "é" * 126 + "a"  # 255 bytes of UTF-8 (126 two-byte characters)
    book = BookSnapshot(longest, 1, 1, 2, 3, 10, 1, 11, 2, ((10, 1),), ((11, 2), (12, 3)))
    assert decode(encode_book(book, source=SOURCE, bus_seq=1)) == BookMessage(SOURCE, 1, book)
    wide = BookSnapshot(longest, 1, 1, 2, 3, 10**30, 1, None, None, ((10**30, 1),), ())
    assert decode(encode_book(wide, source=SOURCE, bus_seq=1)) == BookMessage(SOURCE, 1, wide)
    too_long = BookSnapshot("x:" + "é" * 127, 1, 1, 2, 3, 10, 1, 11, 2)  # 256 bytes
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        encode_book(too_long, source=SOURCE, bus_seq=1)


GOOD = encode_book(
    BookSnapshot("sim:BTC-USDT", 7, 1, 2, 3, 10, 1, 11, 2, ((10, 1),), ((11, 2),)),
    source=SOURCE,
    bus_seq=3,
)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "shorter than its 20-byte header"),
        (b"XX" + GOOD[2:], "not a marketcast bus message"),
        (GOOD[:2] + b"\x02" + GOOD[3:], "version 2; this node reads version 1"),
        (GOOD[:3] + b"\x63" + GOOD[4:], "unknown bus message kind 99"),
        (GOOD[:-1], "book message truncated"),
        (GOOD + b"\x00", "1 bytes past its end"),
        (GOOD[:52] + b"\x80" + GOOD[53:], "unknown flags"),
    ],
)
def test_bad_input_is_a_clear_decode_error(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(payload)


def test_a_bad_instrument_id_is_rejected() -> None:
    bad = BookSnapshot("no-venue", 1, 1, 2, 3, None, None, None, None)
    with pytest.raises(DecodeError, match="instrument id must look like"):
        decode(encode_book(bad, source=SOURCE, bus_seq=1))


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_decode_error(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(payload)


@settings(max_examples=500)
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.integers(0, 255), st.booleans())
def test_corrupted_messages_decode_or_raise_decode_error(at: int, byte: int, cut: bool) -> None:
    payload = GOOD[:at] if cut else GOOD[:at] + bytes([byte]) + GOOD[at + 1 :]
    try:
        message = decode(payload)
    except DecodeError:
        return
    assert isinstance(message, BookMessage)
