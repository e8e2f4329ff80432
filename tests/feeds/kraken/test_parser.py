"""Kraken frames -> normalized events, one documented message shape at a time."""

from __future__ import annotations

import pytest

from book.fixed import parse_fixed
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ControlEvent,
    HeartbeatEvent,
    IgnoredEvent,
    MalformedEvent,
    VenueErrorEvent,
)
from feeds.kraken.checksum import Precision, PrecisionTable
from feeds.kraken.parser import KrakenParser, rfc3339_ns
from feeds.symbols import SymbolMap

BTC = "kraken:BTC-USD"
ETH = "kraken:ETH-USD"
TS = "2023-07-30T15:29:58.343415Z"
TS_NS = 1_690_730_998_343_415_000


def fx(text: str) -> int:
    return parse_fixed(text)


@pytest.fixture
def table() -> PrecisionTable:
    return PrecisionTable()


@pytest.fixture
def parser(table: PrecisionTable) -> KrakenParser:
    return KrakenParser(SymbolMap("kraken", {"BTC-USD": "BTC/USD", "ETH-USD": "ETH/USD"}), table)


def test_v2_snapshot(parser: KrakenParser) -> None:
    frame = (
        '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",'
        '"bids":[{"price":29430.2,"qty":0.18967538},{"price":29429.6,"qty":4}],'
        '"asks":[{"price":29430.3,"qty":0.00100000}],'
        f'"checksum":2785033588,"timestamp":"{TS}"}}]}}'
    )
    assert parser.parse(frame) == [
        BookSnapshotEvent(
            BTC,
            ((fx("29430.2"), fx("0.18967538")), (fx("29429.6"), fx("4"))),
            ((fx("29430.3"), fx("0.001")),),
            ts_event=TS_NS,
            checksum=2785033588,
        )
    ]


def test_v2_update_with_a_delete_and_a_snapshot_without_timestamp(parser: KrakenParser) -> None:
    update = (
        '{"channel":"book","type":"update","data":[{"symbol":"ETH/USD","bids":[],'
        '"asks":[{"price":1850.12,"qty":0.0},{"price":1851.5,"qty":12.5}],'
        f'"checksum":3547452596,"timestamp":"{TS}"}}]}}'
    )
    assert parser.parse(update.encode()) == [
        BookDeltaEvent(
            ETH,
            (),
            ((fx("1850.12"), 0), (fx("1851.5"), fx("12.5"))),
            ts_event=TS_NS,
            checksum=3547452596,
        )
    ]
    snapshot = (
        '{"channel":"book","type":"snapshot","data":[{"symbol":"ETH/USD","bids":[],'
        '"asks":[],"checksum":0}]}'
    )
    assert parser.parse(snapshot) == [BookSnapshotEvent(ETH, (), (), ts_event=0, checksum=0)]


def test_v2_book_of_an_unconfigured_pair_is_ignored(parser: KrakenParser) -> None:
    frame = (
        '{"channel":"book","type":"update","data":[{"symbol":"XRP/USD","bids":[],'
        '"asks":[{"price":0.5,"qty":1}],"checksum":1,"timestamp":"' + TS + '"}]}'
    )
    assert parser.parse(frame) == [IgnoredEvent()]


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        ('{"channel":"heartbeat"}', HeartbeatEvent()),
        ('{"method":"pong","req_id":7,"time_in":"x","time_out":"y"}', HeartbeatEvent()),
        ('{"channel":"ticker","type":"update","data":[]}', IgnoredEvent()),
        (
            '{"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,'
            '"symbol":"BTC/USD"},"success":true,"time_in":"x","time_out":"y"}',
            ControlEvent("subscribe book BTC/USD 10 acknowledged"),
        ),
        (
            '{"method":"unsubscribe","result":{"channel":"book","depth":10,'
            '"symbol":"BTC/USD"},"success":true,"time_in":"x","time_out":"y"}',
            ControlEvent("unsubscribe book BTC/USD 10 acknowledged"),
        ),
        (
            '{"error":"Already subscribed","method":"subscribe","success":false,'
            '"symbol":"BTC/USD","time_in":"x","time_out":"y"}',
            VenueErrorEvent("Kraken subscribe failed: Already subscribed (BTC/USD)", BTC),
        ),
        (
            '{"error":"Currency pair not supported","method":"subscribe","success":false,'
            '"symbol":"XRP/USDX","time_in":"x","time_out":"y"}',
            VenueErrorEvent(
                "Kraken subscribe failed: Currency pair not supported (XRP/USDX)", None
            ),
        ),
        (
            '{"error":"EGeneral:Internal error","success":false,"time_in":"x","time_out":"y"}',
            VenueErrorEvent("Kraken request failed: EGeneral:Internal error"),
        ),
        (
            '{"channel":"status","type":"update","data":[{"api_version":"v2",'
            '"connection_id":1,"system":"online","version":"2.0.10"}]}',
            ControlEvent("system online (2.0.10)"),
        ),
        (
            '{"channel":"status","type":"update","data":[{"api_version":"v2",'
            '"connection_id":1,"system":"maintenance","version":"2.0.10"}]}',
            VenueErrorEvent("Kraken system status: maintenance"),
        ),
    ],
)
def test_v2_control_frames(parser: KrakenParser, frame: str, event: object) -> None:
    assert parser.parse(frame) == [event]


def test_v2_instrument_channel_sets_precisions(parser: KrakenParser, table: PrecisionTable) -> None:
    frame = (
        '{"channel":"instrument","type":"snapshot","data":{"assets":[{"id":"BTC"}],"pairs":['
        '{"symbol":"BTC/USD","price_precision":1,"qty_precision":8,"price_increment":0.1},'
        '{"symbol":"XRP/USD","price_precision":5,"qty_precision":8},'
        '{"symbol":"ETH/USD","price_precision":2,"qty_precision":8}]}}'
    )
    assert parser.parse(frame) == [ControlEvent("instrument precisions: BTC/USD 1/8, ETH/USD 2/8")]
    assert table.as_dict() == {BTC: Precision(1, 8), ETH: Precision(2, 8)}


def test_v1_snapshot_maps_xbt_and_learns_the_precision_of_its_strings(
    parser: KrakenParser, table: PrecisionTable
) -> None:
    frame = (
        '[336,{"as":[["27120.00000","4.28732553","1693415327.935623"]],'
        '"bs":[["27119.90000","13.54067548","1693415328.088361"],'
        '["27119.30000","0.03686228","1693415326.213734"]]},"book-10","XBT/USD"]'
    )
    assert parser.parse(frame) == [
        BookSnapshotEvent(
            BTC,
            ((fx("27119.9"), fx("13.54067548")), (fx("27119.3"), fx("0.03686228"))),
            ((fx("27120"), fx("4.28732553")),),
            ts_event=1_693_415_328_088_361_000,
        )
    ]
    assert table.as_dict() == {BTC: Precision(5, 8)}


def test_v1_update_with_both_sides_a_republished_level_and_the_checksum(
    parser: KrakenParser,
) -> None:
    frame = (
        '[336,{"a":[["27130.20000","0.01237956","1693415479.752899"],'
        '["27130.20000","0.00000000","1693415479.753121"]]},'
        '{"b":[["27116.80000","0.14741986","1693415325.036931","r"]],"c":"974947235"},'
        '"book-10","XBT/USD"]'
    )
    assert parser.parse(frame) == [
        BookDeltaEvent(
            BTC,
            ((fx("27116.8"), fx("0.14741986")),),
            ((fx("27130.2"), fx("0.01237956")), (fx("27130.2"), 0)),
            ts_event=1_693_415_479_753_121_000,
            checksum=974947235,
        )
    ]


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        ('{"event":"heartbeat"}', HeartbeatEvent()),
        ('{"event":"pong","reqid":1693415329704}', HeartbeatEvent()),
        (
            '{"connectionID":1,"event":"systemStatus","status":"online","version":"1.9.1"}',
            ControlEvent("system online (1.9.1)"),
        ),
        (
            '{"channelID":336,"channelName":"book-10","event":"subscriptionStatus",'
            '"pair":"XBT/USD","status":"subscribed","subscription":{"depth":10,"name":"book"}}',
            ControlEvent("subscribed book-10 XBT/USD"),
        ),
        (
            '{"errorMessage":"Currency pair not in ISO 4217-A3 format XBTUSD",'
            '"event":"subscriptionStatus","pair":"XBTUSD","status":"error"}',
            VenueErrorEvent(
                "Kraken subscription failed: Currency pair not in ISO 4217-A3 format XBTUSD"
                " (XBTUSD)",
                None,
            ),
        ),
        (
            '[0,[["5541.20000","0.15850568","1534614057.321597","s","l",""]],"trade","XBT/USD"]',
            IgnoredEvent(),
        ),
        ('[336,{"b":[["1.0","1.0","1.0"]],"c":"1"},"book-10","ADA/EUR"]', IgnoredEvent()),
    ],
)
def test_v1_frames(parser: KrakenParser, frame: str, event: object) -> None:
    assert parser.parse(frame) == [event]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"channel":"book","type":"upd', "invalid JSON"),
        ("42", "neither a JSON object nor an array"),
        ('{"foo":1}', "unexpected Kraken message"),
        (
            '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],'
            '"asks":[{"price":1.5,"qty":1}],"timestamp":"' + TS + '"}]}',
            "unexpected Kraken message: KeyError('checksum')",
        ),
        (
            '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],'
            '"asks":[{"price":"abc","qty":1}],"checksum":1}]}',
            "unexpected Kraken message",
        ),
        (
            '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],'
            '"asks":[{"price":true,"qty":1}],"checksum":1}]}',
            "unexpected Kraken message",
        ),
        (
            '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],'
            '"asks":[{"price":1.5}],"checksum":1}]}',
            "unexpected Kraken message: KeyError('qty')",
        ),
        (
            '{"channel":"book","type":"partial","data":[]}',
            "unexpected Kraken message: ValueError(\"unknown book message type 'partial'\")",
        ),
        ('{"channel":"book","type":"update","data":{"symbol":"BTC/USD"}}', "unexpected"),
        (
            '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],'
            '"asks":[],"checksum":1,"timestamp":"yesterday"}]}',
            "unexpected Kraken message",
        ),
        ('[336,{"b":[["1.0","1.0","1.0"]]},"book-10","XBT/USD"]', "without checksum"),
        ('["book-10","XBT/USD",{},{}]', "integer channel id"),
        ("[336]", "integer channel id"),
        ('[336,{"as":[["1.0"]],"bs":[]},"book-10","XBT/USD"]', "IndexError"),
    ],
)
def test_malformed_frames(parser: KrakenParser, frame: str, reason: str) -> None:
    (event,) = parser.parse(frame)
    assert isinstance(event, MalformedEvent)
    assert reason in event.reason
    assert event.raw == frame


def test_rfc3339() -> None:
    assert rfc3339_ns(TS) == TS_NS
    assert rfc3339_ns("2023-07-30T15:29:58Z") == 1_690_730_998_000_000_000
    assert rfc3339_ns("2023-07-30T15:29:58.123456789Z") == 1_690_730_998_123_456_000
