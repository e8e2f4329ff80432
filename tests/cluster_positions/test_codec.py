"""Who owns an account, and the payloads between edges and shards: exact round trips,
and nothing but ``DecodeError`` on bad input."""

from __future__ import annotations

import hashlib

import pytest

from bus.exceptions import DecodeError
from bus.positions import (
    MAX_PER_MESSAGE,
    MAX_SUBJECT_CHARS,
    CloseOp,
    OpenOp,
    OpRequest,
    PositionOp,
    PositionSubjects,
    decode_answers,
    decode_batch,
    decode_request,
    decode_watch,
    encode_answers,
    encode_batch,
    encode_ops,
    encode_watch,
    shard_of,
)
from publish.exceptions import RequestError
from publish.position import Position, PositionSide
from publish.protocol import ErrorCode


@pytest.mark.parametrize(
    ("account", "digest", "of_2", "of_7"),
    [
        ("acct-1", "2df37e62254fb358", 0, 1),
        ("alice", "4deaec0cce54da89", 1, 2),
        ("bob", "74f32b2bb966a492", 0, 0),
        ("Ünïcode", "a54e942e2878a228", 0, 2),
    ],
)
def test_the_owner_is_blake2b_of_the_name_mod_shards_and_never_changes(
    account: str, digest: str, of_2: int, of_7: int
) -> None:
    assert hashlib.blake2b(account.encode(), digest_size=8).hexdigest() == digest
    assert (shard_of(account, 2), shard_of(account, 7), shard_of(account, 1)) == (of_2, of_7, 0)


def test_accounts_spread_over_the_shards() -> None:
    owners = [shard_of(f"acct-{n}", 4) for n in range(4_000)]
    assert all(800 < owners.count(k) < 1_200 for k in range(4))


def test_position_subjects_sit_beside_the_market_data_prefix() -> None:
    subjects = PositionSubjects("mc.prod")
    assert subjects.ops(3) == "mc.prod-positions.ops.3"
    assert subjects.watch(0) == "mc.prod-positions.watch.0"
    assert subjects.profit("a.b c") == "mc.prod-positions.profit.a_b_c"


def test_ops_round_trip_with_their_numbers() -> None:
    ops: list[tuple[int, PositionOp]] = [
        (
            0,
            OpenOp(
                account="ä", position_id="p 1", instrument="x:Y", side="buy", qty="1.5", price="2"
            ),
        ),
        (2**40, CloseOp(account="a", position_id="p")),
    ]
    assert decode_request(encode_ops(ops)) == OpRequest(ops)
    assert decode_request(encode_ops([])) == OpRequest([])


def test_a_request_names_where_its_answers_go() -> None:
    ops = [(1, CloseOp(account="a", position_id="p"))]
    request = decode_request(encode_ops(ops, answers_to="_INBOX.abc.0"))
    assert request == OpRequest(ops, answers_to="_INBOX.abc.0")


def test_answers_round_trip_exactly_beyond_64_bits() -> None:
    position = Position(
        id="p",
        account="a",
        instrument="x:Y",
        side=PositionSide.SELL,
        qty=10**29 + 7,
        entry_price=3,
        opened_ts=1,
        closed_ts=2,
    )
    answers = decode_answers(
        encode_answers([(5, position), (6, RequestError(ErrorCode.TOO_MANY_POSITIONS, "full"))])
    )
    assert answers[0] == (5, position)
    n, refusal = answers[1]
    assert n == 6 and isinstance(refusal, RequestError)
    assert (refusal.code, refusal.message) == (ErrorCode.TOO_MANY_POSITIONS, "full")


def test_batches_and_watches_round_trip() -> None:
    frames = (("p-1", b'{"type":"profit"}'), ("", b'{"type":"profit_total"}'))
    batch = decode_batch(encode_batch("acct", frames, whole=True))
    assert (batch.account, batch.frames, batch.whole) == ("acct", frames, True)
    assert decode_batch(encode_batch("acct", (), whole=False)).frames == ()
    assert decode_watch(encode_watch("acct", whole=False)) == ("acct", False)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"[]",
        b'{"v":1,"ops":[]}',
        b'{"v":2}',
        b'{"v":2,"ops":{}}',
        b'{"v":2,"ops":[1]}',
        b'{"v":2,"ops":[{"op":"close","account":"a","position_id":"p"}]}',
        b'{"v":2,"ops":[{"n":-1,"op":"close","account":"a","position_id":"p"}]}',
        b'{"v":2,"ops":[{"n":true,"op":"close","account":"a","position_id":"p"}]}',
        b'{"v":2,"ops":[{"n":"1","op":"close","account":"a","position_id":"p"}]}',
        b'{"v":2,"answers_to":7,"ops":[]}',
        b'{"v":2,"answers_to":"","ops":[]}',
        b'{"v":2,"answers_to":"_INBOX.*","ops":[]}',
        b'{"v":2,"answers_to":"_INBOX.>","ops":[]}',
        b'{"v":2,"answers_to":"_INBOX..a","ops":[]}',
        b'{"v":2,"answers_to":"_INBOX a","ops":[]}',
        b'{"v":2,"answers_to":"' + b"a" * (MAX_SUBJECT_CHARS + 1) + b'","ops":[]}',
    ],
)
def test_a_request_that_does_not_decode_as_a_whole_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_request(payload)


def test_a_bad_op_is_a_decode_error_under_its_number() -> None:
    payload = (
        b'{"v":2,"ops":[{"n":1,"op":"nope"},{"n":2,"op":"close"},'
        b'{"n":3,"op":"open","account":"a","position_id":"p","instrument":1},'
        b'{"n":4,"op":"close","account":"a","position_id":"p"}]}'
    )
    decoded = decode_request(payload).ops
    assert [n for n, _ in decoded] == [1, 2, 3, 4]
    assert [str(op) for _, op in decoded[:3]] == [
        "unknown position op 'nope'",
        "position op without 'account'",
        "instrument must be a string",
    ]
    assert all(isinstance(op, DecodeError) for _, op in decoded[:3])
    assert decoded[3] == (4, CloseOp(account="a", position_id="p"))


def test_no_more_than_max_per_message_ops_or_answers_decode() -> None:
    close = CloseOp(account="a", position_id="p")
    full = decode_request(encode_ops((n, close) for n in range(MAX_PER_MESSAGE)))
    assert len(full.ops) == 1_000
    with pytest.raises(DecodeError):
        decode_request(encode_ops((n, close) for n in range(MAX_PER_MESSAGE + 1)))
    refusal = RequestError(ErrorCode.BAD_REQUEST, "x")
    with pytest.raises(DecodeError):
        decode_answers(encode_answers((n, refusal) for n in range(MAX_PER_MESSAGE + 1)))


def test_bad_batches_are_decode_errors() -> None:
    good = encode_batch("acct", (("p", b"{}"),), whole=False)
    for payload in (b"", good[:-1], good + b"x", b"XX" + good[2:], good[:2] + b"\x09" + good[3:]):
        with pytest.raises(DecodeError):
            decode_batch(payload)
    for answers in (
        b'{"v":2,"answers":[{"n":1,"error":"no_such_code","message":"m"}]}',
        b'{"v":2,"answers":[{"n":1,"ok":{"id":"p"}}]}',
        b'{"v":2,"answers":[{"error":"bad_request","message":"m"}]}',
        b'{"v":1,"answers":[]}',
    ):
        with pytest.raises(DecodeError):
            decode_answers(answers)
