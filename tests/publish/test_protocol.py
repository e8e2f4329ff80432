from __future__ import annotations

import orjson
import pytest

from book.consolidated import ConsolidatedBbo
from book.fixed import parse_fixed
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from publish.exceptions import RequestError
from publish.protocol import (
    Channel,
    ErrorCode,
    Op,
    PingRequest,
    Request,
    SubscriptionRequest,
    encode_ack,
    encode_batch,
    encode_bbo,
    encode_error,
    encode_nbbo,
    encode_pong,
    encode_status,
    parse_request,
)


@pytest.mark.parametrize(
    ("raw", "request_"),
    [
        (
            '{"op":"subscribe","id":1,"channel":"bbo","instruments":["binance:BTC-USDT"]}',
            SubscriptionRequest(Op.SUBSCRIBE, 1, Channel.BBO, ("binance:BTC-USDT",)),
        ),
        (
            b'{"op":"unsubscribe","id":"u-7","channel":"bbo","instruments":["a:X-Y","b:X-Y"]}',
            SubscriptionRequest(Op.UNSUBSCRIBE, "u-7", Channel.BBO, ("a:X-Y", "b:X-Y")),
        ),
        (
            '{"op":"subscribe","channel":"bbo","instruments":["a:X-Y","b:X-Y","a:X-Y"]}',
            SubscriptionRequest(Op.SUBSCRIBE, None, Channel.BBO, ("a:X-Y", "b:X-Y")),
        ),
        (
            '{"op":"subscribe","id":5,"channel":"status","instruments":"ignored"}',
            SubscriptionRequest(Op.SUBSCRIBE, 5, Channel.STATUS, ()),
        ),
        ('{"op":"ping","id":11,"extra":{"future":true}}', PingRequest(11)),
        ('{"op":"ping"}', PingRequest(None)),
    ],
)
def test_parse_valid_requests(raw: str | bytes, request_: Request) -> None:
    assert parse_request(raw) == request_


@pytest.mark.parametrize(
    ("raw", "code", "request_id"),
    [
        ("{not json", ErrorCode.BAD_JSON, None),
        ("", ErrorCode.BAD_JSON, None),
        ("[1,2]", ErrorCode.BAD_REQUEST, None),
        ('"ping"', ErrorCode.BAD_REQUEST, None),
        ('{"op":"ping","id":[1]}', ErrorCode.BAD_REQUEST, None),
        ('{"op":"ping","id":true}', ErrorCode.BAD_REQUEST, None),
        ('{"op":"ping","id":1.5}', ErrorCode.BAD_REQUEST, None),
        ('{"id":3}', ErrorCode.BAD_REQUEST, 3),
        ('{"op":7,"id":3}', ErrorCode.BAD_REQUEST, 3),
        ('{"op":"launch","id":3}', ErrorCode.UNKNOWN_OP, 3),
        ('{"op":"subscribe","id":4,"instruments":["a:X-Y"]}', ErrorCode.BAD_REQUEST, 4),
        ('{"op":"subscribe","id":4,"channel":1}', ErrorCode.BAD_REQUEST, 4),
        ('{"op":"subscribe","id":4,"channel":"trades"}', ErrorCode.UNKNOWN_CHANNEL, 4),
        ('{"op":"subscribe","id":4,"channel":"bbo"}', ErrorCode.BAD_REQUEST, 4),
        ('{"op":"subscribe","id":4,"channel":"bbo","instruments":[]}', ErrorCode.BAD_REQUEST, 4),
        (
            '{"op":"subscribe","id":4,"channel":"bbo","instruments":"a:X-Y"}',
            ErrorCode.BAD_REQUEST,
            4,
        ),
        ('{"op":"subscribe","id":4,"channel":"bbo","instruments":[1]}', ErrorCode.BAD_REQUEST, 4),
        ('{"op":"subscribe","id":4,"channel":"bbo","instruments":[""]}', ErrorCode.BAD_REQUEST, 4),
    ],
)
def test_parse_rejects_with_stable_codes(raw: str, code: ErrorCode, request_id: object) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(raw)
    assert (caught.value.code, caught.value.request_id) == (code, request_id)
    assert caught.value.message


def test_error_codes_are_the_documented_strings() -> None:
    assert [code.value for code in ErrorCode] == [
        "bad_json",
        "bad_request",
        "unknown_op",
        "unknown_channel",
        "unknown_instrument",
        "too_large",
        "too_many_subscriptions",
        "too_many_connections",
        "not_found",
        "not_live",
        "unknown_symbol",
        "rate_limited",
        "auth_required",
        "token_invalid",
        "token_expired",
        "forbidden",
        "invalid_position",
        "duplicate_position",
        "unknown_position",
        "position_pending",
        "too_many_positions",
        "storage_unavailable",
        "method_not_allowed",
        "unknown_venue",
    ]


def test_encode_bbo_is_exact_text_and_null_for_an_empty_side() -> None:
    snapshot = BookSnapshot(
        instrument="binance:BTC-USDT",
        seq=123,
        ts_event=1_700_000_000_000_000_001,
        ts_recv=1_700_000_000_000_000_002,
        ts_book=1_700_000_000_000_000_003,
        bid=parse_fixed("43000.10"),
        bid_qty=parse_fixed("0.00000001"),
        ask=None,
        ask_qty=None,
    )
    assert encode_bbo(snapshot, 1_700_000_000_000_000_009) == (
        b'{"type":"bbo","instrument":"binance:BTC-USDT","seq":123,'
        b'"bid":"43000.1","bid_qty":"0.00000001","ask":null,"ask_qty":null,'
        b'"ts_event":1700000000000000001,"ts_recv":1700000000000000002,'
        b'"ts_send":1700000000000000009}'
    )


@pytest.mark.parametrize(
    ("bid", "ask", "market"),
    [("100", "100.5", "normal"), ("100.5", "100.5", "locked"), ("100.6", "100.5", "crossed")],
)
def test_encode_nbbo_says_whether_the_market_is_normal_locked_or_crossed(
    bid: str, ask: str, market: str
) -> None:
    nbbo = ConsolidatedBbo(
        "BTC-USDT",
        7,
        1,
        2,
        parse_fixed(bid),
        parse_fixed("3"),
        "kraken",
        parse_fixed(ask),
        parse_fixed("4"),
        "okx",
    )
    assert encode_nbbo(nbbo, 9) == (
        b'{"type":"nbbo","symbol":"BTC-USDT","seq":7,'
        b'"bid":"%s","bid_qty":"3","bid_venue":"kraken",'
        b'"ask":"%s","ask_qty":"4","ask_venue":"okx","market":"%s",'
        b'"ts_event":1,"ts_recv":2,"ts_send":9}' % (bid.encode(), ask.encode(), market.encode())
    )


def test_encode_replies_and_status() -> None:
    keyed = SubscriptionRequest(Op.SUBSCRIBE, 1, Channel.BBO, ("a:X-Y", "b:X-Y"))
    channel_wide = SubscriptionRequest(Op.UNSUBSCRIBE, "s", Channel.STATUS)
    status = InstrumentStatus("a:X-Y", InstrumentState.STALE, "gap 10 -> 12", 5)
    assert [
        orjson.loads(encode_ack(keyed)),
        orjson.loads(encode_ack(channel_wide)),
        orjson.loads(encode_error(ErrorCode.UNKNOWN_INSTRUMENT, "unknown: z:X-Y", 9)),
        orjson.loads(encode_error(ErrorCode.BAD_JSON, "not valid JSON")),
        orjson.loads(encode_pong("p")),
        orjson.loads(encode_status(status)),
    ] == [
        {
            "type": "ack",
            "id": 1,
            "op": "subscribe",
            "channel": "bbo",
            "instruments": ["a:X-Y", "b:X-Y"],
        },
        {"type": "ack", "id": "s", "op": "unsubscribe", "channel": "status"},
        {"type": "error", "id": 9, "code": "unknown_instrument", "message": "unknown: z:X-Y"},
        {"type": "error", "id": None, "code": "bad_json", "message": "not valid JSON"},
        {"type": "pong", "id": "p"},
        {"type": "status", "instrument": "a:X-Y", "state": "stale", "reason": "gap 10 -> 12"},
    ]


def test_encode_batch_is_a_json_array_of_the_messages() -> None:
    messages = [encode_pong(1), encode_pong(2)]
    assert orjson.loads(encode_batch(messages)) == [
        {"type": "pong", "id": 1},
        {"type": "pong", "id": 2},
    ]
    assert encode_batch([encode_pong(1)]) == b'[{"type":"pong","id":1}]'
