"""Binance spot and USD-M frames -> normalized events, in the documented formats and on
slices of the recorded traffic.

Shapes from developers.binance.com: spot "Diff. Depth Stream", "Individual Symbol Book
Ticker Streams", ``GET /api/v3/depth`` and the websocket API's request replies and
errors; USD-M "Diff. Book Depth Streams" (adds ``T`` and ``pu``) and its bookTicker
(adds ``e``, ``E``, ``T``). Recorded slices: the first frames of the cryptofeed and
hftbacktest recordings in ``tests/fixtures/recorded/binance`` (see NOTICE.md).
"""

from __future__ import annotations

from itertools import islice, pairwise
from pathlib import Path

import orjson
import pytest

from book.fixed import parse_fixed
from feeds.binance.parser import BinanceParser
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ControlEvent,
    FeedEvent,
    IgnoredEvent,
    MalformedEvent,
    TopOfBookEvent,
    VenueErrorEvent,
)
from feeds.recordings import FrameKind, RecordedFrame, read_recording
from feeds.symbols import SymbolMap
from tests.recorded import BINANCE_SPOT_CRYPTOFEED, BINANCE_SPOT_HFT, BINANCE_USDM_CRYPTOFEED

F = parse_fixed
MS = 1_000_000
SPOT = BinanceParser(SymbolMap("binance", {"BTC-USDT": "BTCUSDT", "NKN-USDT": "NKNUSDT"}))
USDM = BinanceParser(SymbolMap("binance-usdm", {"SUSHI-USDT-PERP": "SUSHIUSDT"}))
BTC = "binance:BTC-USDT"

DEPTH_UPDATE = {
    "e": "depthUpdate",
    "E": 1_723_161_255_208,
    "s": "BTCUSDT",
    "U": 50_093_239_189,
    "u": 50_093_239_202,
    "b": [["61737.63000000", "0.00000000"], ["61730.17000000", "0.25000000"]],
    "a": [["61837.64000000", "1.54698000"]],
}
DELTA = BookDeltaEvent(
    BTC,
    ((F("61737.63"), 0), (F("61730.17"), F("0.25"))),
    ((F("61837.64"), F("1.54698")),),
    first_id=50_093_239_189,
    last_id=50_093_239_202,
    ts_event=1_723_161_255_208 * MS,
)


def combined(stream: str, data: object) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def test_a_depth_update_is_a_delta_with_its_update_id_range() -> None:
    assert SPOT.parse(combined("btcusdt@depth@100ms", DEPTH_UPDATE)) == [DELTA]
    # A raw stream (no combined-stream wrapper) says the same; text or bytes alike.
    assert SPOT.parse(orjson.dumps(DEPTH_UPDATE).decode()) == [DELTA]


def test_a_usdm_depth_update_carries_the_previous_update_id() -> None:
    data = {**DEPTH_UPDATE, "s": "SUSHIUSDT", "T": 1_723_161_255_200, "pu": 50_093_239_188}
    (event,) = USDM.parse(combined("sushiusdt@depth@100ms", data))
    assert event == BookDeltaEvent(
        "binance-usdm:SUSHI-USDT-PERP",
        DELTA.bids,
        DELTA.asks,
        first_id=50_093_239_189,
        last_id=50_093_239_202,
        prev_id=50_093_239_188,
        ts_event=1_723_161_255_208 * MS,
    )


def test_book_tickers_spot_without_event_type_and_usdm_with_it() -> None:
    spot = {
        "u": 50_093_239_212,
        "s": "BTCUSDT",
        "b": "61837.63000000",
        "B": "3.78826000",
        "a": "61837.64000000",
        "A": "1.54698000",
    }
    top = TopOfBookEvent(
        BTC, F("61837.63"), F("3.78826"), F("61837.64"), F("1.54698"), update_id=50_093_239_212
    )
    assert SPOT.parse(combined("btcusdt@bookTicker", spot)) == [top]
    usdm = {**spot, "s": "SUSHIUSDT", "e": "bookTicker", "E": 1_626_992_741_017, "T": 1}
    (event,) = USDM.parse(combined("sushiusdt@bookTicker", usdm))
    assert event == TopOfBookEvent(
        "binance-usdm:SUSHI-USDT-PERP",
        top.bid,
        top.bid_qty,
        top.ask,
        top.ask_qty,
        update_id=50_093_239_212,
        ts_event=1_626_992_741_017 * MS,
    )


def test_the_rest_depth_snapshot() -> None:
    body = (
        b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],'
        b'"asks":[["4.00000200","12.00000000"],["4.00000300","0.5"]]}'
    )
    assert SPOT.parse_snapshot(BTC, body) == BookSnapshotEvent(
        BTC,
        ((F("4"), F("431")),),
        ((F("4.000002"), F("12")), (F("4.000003"), F("0.5"))),
        update_id=1027024,
    )


@pytest.mark.parametrize(
    "body", [b'{"code":-1121,"msg":"Invalid symbol."}', b"<html>502</html>", b'{"bids":[]}']
)
def test_anything_else_is_not_a_snapshot(body: bytes) -> None:
    with pytest.raises(ValueError, match="not a Binance depth snapshot"):
        SPOT.parse_snapshot(BTC, body)


def test_replies_errors_and_the_shutdown_notice() -> None:
    assert SPOT.parse(b'{"result":null,"id":1}') == [
        ControlEvent("reply to request 1: None"),
    ]
    assert SPOT.parse(b'{"code":-1121,"msg":"Invalid symbol."}') == [
        VenueErrorEvent("Binance error -1121: Invalid symbol.")
    ]
    assert SPOT.parse(b'{"e":"serverShutdown","E":1723161255208}') == [
        VenueErrorEvent("server shutdown announced", reconnect=True)
    ]


def test_other_streams_and_unconfigured_symbols_are_ignored() -> None:
    trade = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 3, "p": "1", "q": "1"}
    assert SPOT.parse(combined("btcusdt@trade", trade)) == [IgnoredEvent()]
    other = {**DEPTH_UPDATE, "s": "ETHUSDT"}
    assert SPOT.parse(combined("ethusdt@depth@100ms", other)) == [IgnoredEvent()]
    ticker = {"u": 1, "s": "ETHUSDT", "b": "1", "B": "1", "a": "2", "A": "1"}
    assert SPOT.parse(combined("ethusdt@bookTicker", ticker)) == [IgnoredEvent()]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpd', "invalid JSON"),
        (b"[1,2]", "frame is not a JSON object"),
        (b'{"stream":"x","data":[]}', "unexpected Binance message: AttributeError"),
        (combined("s", {**DEPTH_UPDATE, "U": None}), "unexpected Binance message: TypeError"),
        (combined("s", {**DEPTH_UPDATE, "b": [["1.0"]]}), "unexpected Binance message"),
        (b'{"x":1}', "unexpected Binance message: ValueError"),
    ],
)
def test_malformed_frames_are_events_with_their_text(frame: bytes, reason: str) -> None:
    (event,) = SPOT.parse(frame)
    assert isinstance(event, MalformedEvent)
    assert event.reason.startswith(reason)
    assert event.raw == frame.decode()


def test_undecodable_bytes_are_kept_readable() -> None:
    (event,) = SPOT.parse(b'{"e":"depthUpdate"\xff')
    assert isinstance(event, MalformedEvent)
    assert event.raw == '{"e":"depthUpdate"\ufffd'


def received(path: Path, count: int) -> list[RecordedFrame]:
    """The first ``count`` received frames of a recording."""
    frames = (f for f in read_recording(path) if f.kind is FrameKind.RECV)
    return list(islice(frames, count))


def parse_all(parser: BinanceParser, frames: list[RecordedFrame]) -> list[FeedEvent]:
    return [event for frame in frames for event in parser.parse(frame.data)]


def test_a_recorded_spot_slice_from_cryptofeed() -> None:
    """NKNUSDT's first frames of 2021-10-12; the klines and aggTrades of the same
    connection are ignored, as are the symbols not configured."""
    events = parse_all(SPOT, received(BINANCE_SPOT_CRYPTOFEED, 200))
    assert not [e for e in events if isinstance(e, MalformedEvent)]
    deltas = [e for e in events if isinstance(e, BookDeltaEvent)]
    assert deltas[:2] == [
        BookDeltaEvent(
            "binance:NKN-USDT",
            ((F("0.3513"), F("6195")), (F("0.3475"), F("5548")), (F("0.3464"), F("6222"))),
            (),
            first_id=499_869_750,
            last_id=499_869_752,
            ts_event=1_633_998_512_068 * MS,
        ),
        BookDeltaEvent(
            "binance:NKN-USDT",
            ((F("0.3517"), F("4265")),),
            ((F("0.3529"), F("10968")),),
            first_id=499_869_753,
            last_id=499_869_754,
            ts_event=1_633_998_512_568 * MS,
        ),
    ]
    # Consecutive NKN updates chain: each U is the previous u + 1.
    ids = [(delta.first_id, delta.last_id) for delta in deltas]
    assert all(first == last + 1 for (_, last), (first, _) in pairwise(ids))
    assert {type(e) for e in events} == {BookDeltaEvent, TopOfBookEvent, IgnoredEvent}


def test_a_recorded_usdm_slice_from_cryptofeed() -> None:
    events = parse_all(USDM, received(BINANCE_USDM_CRYPTOFEED, 2))
    assert events == [
        TopOfBookEvent(
            "binance-usdm:SUSHI-USDT-PERP",
            F("7.611"),
            F("2"),
            F("7.612"),
            F("297"),
            update_id=600_859_600_576,
            ts_event=1_626_992_741_017 * MS,
        ),
        BookDeltaEvent(
            "binance-usdm:SUSHI-USDT-PERP",
            ((F("7.504"), F("813")), (F("7.609"), 0), (F("7.611"), F("2"))),
            ((F("7.615"), F("1563")), (F("7.622"), F("3284"))),
            first_id=600_859_599_090,
            last_id=600_859_600_917,
            prev_id=600_859_598_061,
            ts_event=1_626_992_741_037 * MS,
        ),
    ]


def test_a_recorded_spot_slice_from_hftbacktest() -> None:
    events = parse_all(SPOT, received(BINANCE_SPOT_HFT, 3))
    assert [type(e) for e in events] == [BookDeltaEvent, BookDeltaEvent, TopOfBookEvent]
    first, second, ticker = events
    assert isinstance(first, BookDeltaEvent) and isinstance(second, BookDeltaEvent)
    assert (first.first_id, first.last_id, second.first_id, second.last_id) == (
        50_093_239_189,
        50_093_239_202,
        50_093_239_203,
        50_093_239_207,
    )
    assert first.bids[0] == (F("61737.63"), 0)  # "0.00000000" deletes the level
    assert ticker == TopOfBookEvent(
        BTC, F("61837.63"), F("3.78826"), F("61837.64"), F("1.54698"), update_id=50_093_239_212
    )
