"""Who owns an account, and the payloads between edges and shards: exact round trips,
and nothing but ``DecodeError`` on bad input."""

from __future__ import annotations

import hashlib

import pytest

from bus.exceptions import DecodeError
from bus.positions import (
    CloseOp,
    OpenOp,
    PositionSubjects,
    decode_answer,
    decode_batch,
    decode_op,
    decode_watch,
    encode_batch,
    encode_op,
    encode_position,
    encode_refusal,
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


def test_ops_round_trip() -> None:
    ops = [
        OpenOp(account="ä", position_id="p 1", instrument="x:Y", side="buy", qty="1.5", price="2"),
        CloseOp(account="a", position_id="p"),
    ]
    assert [decode_op(encode_op(op)) for op in ops] == ops


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
    assert decode_answer(encode_position(position)) == position
    refusal = decode_answer(encode_refusal(RequestError(ErrorCode.TOO_MANY_POSITIONS, "full")))
    assert isinstance(refusal, RequestError)
    assert (refusal.code, refusal.message) == (ErrorCode.TOO_MANY_POSITIONS, "full")


def test_batches_and_watches_round_trip() -> None:
    frames = (("p-1", b'{"type":"profit"}'), ("", b'{"type":"profit_total"}'))
    batch = decode_batch(encode_batch("acct", frames, whole=True))
    assert (batch.account, batch.frames, batch.whole) == ("acct", frames, True)
    assert decode_batch(encode_batch("acct", (), whole=False)).frames == ()
    assert decode_watch(encode_watch("acct", whole=False)) == ("acct", False)


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"[]", b'{"v":2,"op":"open"}', b'{"v":1,"op":"nope"}', b'{"v":1,"op":"close"}'],
)
def test_bad_ops_are_decode_errors(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_op(payload)


def test_bad_batches_are_decode_errors() -> None:
    good = encode_batch("acct", (("p", b"{}"),), whole=False)
    for payload in (b"", good[:-1], good + b"x", b"XX" + good[2:], good[:2] + b"\x09" + good[3:]):
        with pytest.raises(DecodeError):
            decode_batch(payload)
    with pytest.raises(DecodeError):
        decode_answer(b'{"v":1,"error":"no_such_code","message":"m"}')
