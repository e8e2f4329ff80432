"""OKX frames in the documented v5 formats -> whole normalized events; the adapter's frames.

Message texts follow OKX's v5 API docs (``books`` channel push examples, subscribe
replies, the 60012 failure example, the 64008 notice) and the 2022 recording.
"""

from __future__ import annotations

import orjson
import pytest

from book.fixed import parse_fixed
from feeds.events import (
    ControlEvent,
    HeartbeatEvent,
    IgnoredEvent,
    MalformedEvent,
    VenueErrorEvent,
)
from feeds.okx.adapter import OkxAdapter, okx_canonical, okx_inst_id, okx_symbols
from feeds.okx.parser import OkxDeltaEvent, OkxParser, OkxSnapshotEvent
from feeds.symbols import SymbolMap

SYMBOLS = SymbolMap("okx", okx_symbols(["BTC-USDT", "BTC-USDT-PERP"]))
PARSER = OkxParser(SYMBOLS)
F = parse_fixed

DOC_SNAPSHOT = (
    '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"snapshot","data":[{'
    '"asks":[["8476.98","415","0","13"],["8477","7","0","2"]],'
    '"bids":[["8476.97","256","0","12"],["8475.55","101","0","1"]],'
    '"ts":"1597026383085","checksum":-855196043,"prevSeqId":-1,"seqId":123456}]}'
)
DOC_UPDATE = (
    '{"arg":{"channel":"books","instId":"BTC-USDT-SWAP"},"action":"update","data":[{'
    '"asks":[["8476.98","0","0","0"]],"bids":[["8475.3","1.50","0","1"]],'
    '"ts":"1597026383185","checksum":0,"prevSeqId":123456,"seqId":123457}]}'
)


def test_snapshot() -> None:
    assert PARSER.parse(DOC_SNAPSHOT) == [
        OkxSnapshotEvent(
            "okx:BTC-USDT",
            ((F("8476.97"), F("256")), (F("8475.55"), F("101"))),
            ((F("8476.98"), F("415")), (F("8477"), F("7"))),
            update_id=123456,
            ts_event=1597026383085_000_000,
            checksum=-855196043,
            bid_text=(("8476.97", "256"), ("8475.55", "101")),
            ask_text=(("8476.98", "415"), ("8477", "7")),
        )
    ]


def test_update_of_a_swap_keeps_the_exchange_strings() -> None:
    assert PARSER.parse(DOC_UPDATE.encode()) == [
        OkxDeltaEvent(
            "okx:BTC-USDT-PERP",
            ((F("8475.3"), F("1.5")),),
            ((F("8476.98"), 0),),
            last_id=123457,
            prev_id=123456,
            ts_event=1597026383185_000_000,
            checksum=0,
            bid_text=(("8475.3", "1.50"),),
            ask_text=(("8476.98", "0"),),
        )
    ]


def test_update_from_before_sequence_ids() -> None:
    frame = (
        '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{'
        '"asks":[],"bids":[["30182.6","452","0","1"]],"ts":"1652459225464",'
        '"checksum":-914047754}]}'
    )
    assert PARSER.parse(frame) == [
        OkxDeltaEvent(
            "okx:BTC-USDT",
            ((F("30182.6"), F("452")),),
            (),
            ts_event=1652459225464_000_000,
            checksum=-914047754,
            bid_text=(("30182.6", "452"),),
        )
    ]


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        (
            '{"id":"1512","event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},'
            '"connId":"a4d3ae55"}',
            ControlEvent("subscribe books BTC-USDT"),
        ),
        (
            '{"event":"unsubscribe","arg":{"channel":"books","instId":"BTC-USDT-SWAP"},'
            '"connId":"a4d3ae55"}',
            ControlEvent("unsubscribe books BTC-USDT-SWAP"),
        ),
        (
            '{"id":"1512","event":"error","code":"60012","msg":"Invalid request: {\\"op\\": '
            '\\"subscribe\\", \\"argss\\":[{ \\"channel\\" : \\"books\\", \\"instId\\" : '
            '\\"BTC-USD-191227\\"}]}","connId":"a4d3ae55"}',
            VenueErrorEvent(
                'OKX error 60012: Invalid request: {"op": "subscribe", "argss":[{ "channel" :'
                ' "books", "instId" : "BTC-USD-191227"}]}'
            ),
        ),
        (
            '{"event":"error","code":"60018","msg":"Wrong URL","arg":{"channel":"books",'
            '"instId":"BTC-USDT"},"connId":"a4d3ae55"}',
            VenueErrorEvent("OKX error 60018: Wrong URL", instrument="okx:BTC-USDT"),
        ),
        (
            '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a '
            'service upgrade. Please reconnect.","connId":"a4d3ae55"}',
            VenueErrorEvent(
                "OKX notice 64008: The connection will soon be closed for a service upgrade. "
                "Please reconnect.",
                reconnect=True,
            ),
        ),
        (
            '{"event":"channel-conn-count","channel":"books","connCount":"2","connId":"a4"}',
            ControlEvent("channel-conn-count"),
        ),
        ("pong", HeartbeatEvent()),
        (b"pong", HeartbeatEvent()),
        (
            '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
            '"tradeId":"130639474","px":"42219.9","sz":"0.12060306","side":"buy",'
            '"ts":"1630048897897"}]}',
            IgnoredEvent(),
        ),
        (DOC_SNAPSHOT.replace("BTC-USDT", "ETH-USDT"), IgnoredEvent()),
    ],
)
def test_control_heartbeat_and_other_frames(frame: str | bytes, event: object) -> None:
    assert PARSER.parse(frame) == [event]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"arg":{"channel":"books"', "invalid JSON"),
        ("[1,2]", "frame is not a JSON object"),
        ("ping", "invalid JSON"),
        ('{"arg":{"channel":"books","instId":"BTC-USDT"}}', "unexpected OKX message: KeyError"),
        (DOC_SNAPSHOT.replace('"snapshot"', '"partial"'), "unexpected OKX message: ValueError"),
        (DOC_SNAPSHOT.replace('"8477"', "8477"), "unexpected OKX message: AttributeError"),
        (DOC_SNAPSHOT.replace('"seqId":123456', '"seqId":"x"'), "unexpected OKX message: Val"),
        (DOC_SNAPSHOT.replace("123456", "true"), "unexpected OKX message: TypeError"),
        (DOC_SNAPSHOT.replace('"8477"', '"8.4.77"'), "unexpected OKX message: ValueError"),
    ],
)
def test_garbage_is_malformed_never_an_exception(frame: str, reason: str) -> None:
    (event,) = PARSER.parse(frame)
    assert isinstance(event, MalformedEvent)
    assert event.raw == frame
    assert event.reason.startswith(reason)


def test_instrument_ids() -> None:
    assert okx_inst_id("BTC-USDT") == "BTC-USDT"
    assert okx_inst_id("BTC-USDT-PERP") == "BTC-USDT-SWAP"
    assert okx_canonical("BTC-USDT-SWAP") == "BTC-USDT-PERP"
    assert okx_canonical("BTC-USD-220527") == "BTC-USD-220527"
    assert okx_symbols(["ETH-USDT", "ETH-USDT-PERP"]) == {
        "ETH-USDT": "ETH-USDT",
        "ETH-USDT-PERP": "ETH-USDT-SWAP",
    }


def test_adapter_frames() -> None:
    adapter = OkxAdapter(SYMBOLS)
    assert adapter.stream_url(SYMBOLS.instruments()) == "wss://ws.okx.com:8443/ws/v5/public"
    assert OkxAdapter(SYMBOLS, ws_base="ws://127.0.0.1:9/").ws_url == (
        "ws://127.0.0.1:9/ws/v5/public"
    )
    demo = "wss://wspap.okx.com:8443/ws/v5/public?brokerId=9999"
    assert OkxAdapter(SYMBOLS, ws_base=demo).ws_url == demo
    assert [orjson.loads(f) for f in adapter.subscribe_frames(SYMBOLS.instruments())] == [
        {
            "op": "subscribe",
            "args": [
                {"channel": "books", "instId": "BTC-USDT"},
                {"channel": "books", "instId": "BTC-USDT-SWAP"},
            ],
        }
    ]
    assert [orjson.loads(f) for f in adapter.resubscribe_frames("okx:BTC-USDT-PERP")] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT-SWAP"}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT-SWAP"}]},
    ]
    assert adapter.app_ping_frame() == "ping"
    assert 0 < adapter.app_ping_interval < 30
    assert adapter.instrument_silence_timeout > 60  # OKX's keepalive update for quiet books
    assert adapter.rest_snapshots is False
