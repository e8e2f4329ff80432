"""What positions shards and edges say to each other: who owns an account, the
subjects, and the payloads.

**Ownership.** Shard ``shard_of(account, shards)`` owns an account: the first 8 bytes of
the BLAKE2b digest (``digest_size=8``) of the account name's UTF-8 bytes, read as a
big-endian unsigned integer, modulo ``[bus].shards``. The same in every process, machine
and Python version (never Python's ``hash()``, which is salted per process). Changing
``shards`` moves accounts: every node of a cluster must use the same value.

**Subjects**, under ``<prefix>-positions`` — beside, not under, ``<prefix>.``, which
every edge and shard reads in full for market data, so that position ops and an
account's profit reach only the nodes that asked for them::

    <prefix>-positions.ops.<k>           requests: position ops for shard k, answered on
                                         the request's ``answers_to`` subject, else on
                                         its reply subject (an edge's inbox)
    <prefix>-positions.watch.<k>         request/reply: an edge watches an account's profit
    <prefix>-positions.profit.<account>  the account's profit frames (``token(account)``;
                                         the payload names the exact account)

**Payloads.** Ops and their answers are JSON (orjson); amounts in fixed-point integer
units, as decimal strings (exact, beyond 64 bits). An edge sends the ops its clients
made in one turn of its event loop as one request, each numbered by the edge (``n``,
unique among its ops in flight); the shard answers each op as it commits or is refused,
the answers it has for one subject in one message, in any grouping and order. A request
may name where its answers go (``answers_to``, one subject for all of an edge's requests
to a shard, so that answers of several requests still travel together) apart from its
reply subject (one per request, so that the bus's "no responders" status for it names
the request)::

    {"v":2,"answers_to":SUBJECT,
     "ops":[{"n":N,"op":"open","account":A,"position_id":P,"instrument":I,
             "side":S,"qty":Q,"price":X}, {"n":N,"op":"close","account":A,
             "position_id":P}, ...]}
    {"v":2,"answers":[{"n":N,"ok":{position as stored}}, {"n":N,"error":CODE,
                      "message":TEXT}, ...]}
    watch: {"v":2,"account":A,"whole":true|false}

At most ``MAX_PER_MESSAGE`` ops or answers travel in one message. An op that does not
decode is answered ``bad_request`` under its ``n``; a request or an answer message that
does not decode as a whole is dropped and counted (the edge's ``ack_timeout`` answers
its ops).

Profit frames travel as one binary batch per account and shard tick (the answer to a
watch is a batch too)::

    b"MP" | version u8 (1) | whole u8 | account (u16 length + UTF-8) | count u32 |
    count x (key (u16 length + UTF-8: the position id, "" for the total) |
             frame (u32 length + the client's JSON frame, byte for byte))

``whole`` says the batch is the account's whole current state. Decoding never raises
anything but ``DecodeError``. Nothing here carries a credential: an edge has checked the
client's token and sends only the account it acts for.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bus.exceptions import DecodeError
from bus.subjects import Subjects, token
from publish.exceptions import RequestError
from publish.position import Position, PositionSide
from publish.protocol import ErrorCode

VERSION = 2
"""Of the JSON messages (ops, answers, watches)."""
MAX_PER_MESSAGE = 1_000
"""Ops in one request, answers in one message: a few hundred KB, under NATS's default
1 MB ``max_payload``."""
MAX_SUBJECT_CHARS = 512
"""The longest ``answers_to`` a shard publishes on (an edge's is about 30 characters)."""
BATCH_VERSION = 1
"""Of the binary profit batches."""
BATCH_MAGIC = b"MP"
_BATCH_HEAD = struct.Struct("<2sBB")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def shard_of(account: str, shards: int) -> int:
    """The shard that owns ``account`` among ``shards``; see the module docstring."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    digest = hashlib.blake2b(account.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


class PositionSubjects:
    """The position subjects of one bus prefix."""

    __slots__ = ("root",)

    def __init__(self, prefix: str) -> None:
        Subjects(prefix)  # the same rules as market data subjects
        self.root = f"{prefix}-positions"

    def ops(self, shard: int) -> str:
        return f"{self.root}.ops.{shard}"

    def watch(self, shard: int) -> str:
        return f"{self.root}.watch.{shard}"

    def profit(self, account: str) -> str:
        return f"{self.root}.profit.{token(account)}"


# -- ops ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenOp:
    account: str
    position_id: str
    instrument: str
    side: str
    qty: str
    price: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseOp:
    account: str
    position_id: str


PositionOp = OpenOp | CloseOp


OpNumber = int
"""An op's number, given by the edge that sent it: its answer carries it back."""
Answer = Position | RequestError
"""A shard's answer to an op: the position as stored, or its refusal."""


@dataclass(frozen=True, slots=True)
class OpRequest:
    """A request as the shard reads it: its ops as ``(n, op)`` (an op that does not
    decode as ``(n, its DecodeError)``), and where their answers go (``None``: to the
    request's reply subject)."""

    ops: Sequence[tuple[OpNumber, PositionOp | DecodeError]]
    answers_to: str | None = None


def encode_ops(
    ops: Iterable[tuple[OpNumber, PositionOp]], *, answers_to: str | None = None
) -> bytes:
    """One request: ``ops`` as ``(n, op)``, answered on ``answers_to`` when given."""
    body: dict[str, Any] = {"v": VERSION, "ops": [_op_body(n, op) for n, op in ops]}
    if answers_to is not None:
        body["answers_to"] = answers_to
    return orjson.dumps(body)


def _op_body(n: OpNumber, op: PositionOp) -> dict[str, Any]:
    if isinstance(op, OpenOp):
        return {
            "n": n,
            "op": "open",
            "account": op.account,
            "position_id": op.position_id,
            "instrument": op.instrument,
            "side": op.side,
            "qty": op.qty,
            "price": op.price,
        }
    return {"n": n, "op": "close", "account": op.account, "position_id": op.position_id}


def decode_request(payload: bytes) -> OpRequest:
    """A request (``OpRequest``). Raises ``DecodeError`` for a request that does not
    decode as a whole (not a list of numbered objects, more than ``MAX_PER_MESSAGE``, or
    an ``answers_to`` that is not a subject to publish on)."""
    body = _json(payload)
    items = _list(body, "ops")
    decoded: list[tuple[OpNumber, PositionOp | DecodeError]] = []
    for item in items:
        n = _number(item)
        try:
            decoded.append((n, _op(item)))
        except DecodeError as exc:
            decoded.append((n, exc))
    return OpRequest(decoded, _answers_to(body))


def _answers_to(body: dict[str, Any]) -> str | None:
    subject = body.get("answers_to")
    if subject is None:
        return None
    if (
        not isinstance(subject, str)
        or not 0 < len(subject) <= MAX_SUBJECT_CHARS
        or any(part in ("", "*", ">") for part in subject.split("."))
        or any(char.isspace() for char in subject)
    ):
        raise DecodeError(f"answers_to is not a subject to publish on: {str(subject)[:64]!r}")
    return subject


def _op(body: dict[str, Any]) -> PositionOp:
    try:
        if body["op"] == "open":
            return OpenOp(
                account=_str(body, "account"),
                position_id=_str(body, "position_id"),
                instrument=_str(body, "instrument"),
                side=_str(body, "side"),
                qty=_str(body, "qty"),
                price=_str(body, "price"),
            )
        if body["op"] == "close":
            return CloseOp(account=_str(body, "account"), position_id=_str(body, "position_id"))
    except KeyError as exc:
        raise DecodeError(f"position op without {exc}") from None
    raise DecodeError(f"unknown position op {str(body.get('op'))[:16]!r}")


def encode_answers(answers: Iterable[tuple[OpNumber, Answer]]) -> bytes:
    """One message of answers, as ``(n, answer)``."""
    return orjson.dumps({"v": VERSION, "answers": [_answer_body(n, a) for n, a in answers]})


def _answer_body(n: OpNumber, answer: Answer) -> dict[str, Any]:
    if isinstance(answer, RequestError):
        return {"n": n, "error": answer.code.value, "message": answer.message}
    return {
        "n": n,
        "ok": {
            "id": answer.id,
            "account": answer.account,
            "instrument": answer.instrument,
            "side": answer.side.value,
            "qty": str(answer.qty),
            "entry_price": str(answer.entry_price),
            "opened_ts": answer.opened_ts,
            "closed_ts": answer.closed_ts,
        },
    }


def decode_answers(payload: bytes) -> list[tuple[OpNumber, Answer]]:
    """A message's answers as ``(n, answer)``; ``DecodeError`` if any of them does not
    decode (the ops then get no answer from it)."""
    return [(_number(item), _answer(item)) for item in _list(_json(payload), "answers")]


def _answer(body: dict[str, Any]) -> Answer:
    try:
        if "error" in body:
            return RequestError(ErrorCode(body["error"]), _str(body, "message"))
        row = body["ok"]
        closed = row["closed_ts"]
        return Position(
            id=_str(row, "id"),
            account=_str(row, "account"),
            instrument=_str(row, "instrument"),
            side=PositionSide(row["side"]),
            qty=int(_str(row, "qty")),
            entry_price=int(_str(row, "entry_price")),
            opened_ts=_int(row, "opened_ts"),
            closed_ts=None if closed is None else _int(row, "closed_ts"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise DecodeError(f"bad position answer: {exc}") from None


def encode_watch(account: str, *, whole: bool) -> bytes:
    return orjson.dumps({"v": VERSION, "account": account, "whole": whole})


def decode_watch(payload: bytes) -> tuple[str, bool]:
    """``(account, whole)``: watch the account; answer with its whole state if asked."""
    body = _json(payload)
    whole = body.get("whole")
    if not isinstance(whole, bool):
        raise DecodeError("a watch says whether it wants the whole state")
    return _str(body, "account"), whole


# -- profit batches -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfitBatch:
    account: str
    frames: tuple[tuple[str, bytes], ...]
    whole: bool


def encode_batch(account: str, frames: Iterable[tuple[str, bytes]], *, whole: bool) -> bytes:
    parts = [_BATCH_HEAD.pack(BATCH_MAGIC, BATCH_VERSION, int(whole)), _text16(account), b""]
    count = 0
    for key, frame in frames:
        parts.append(_text16(key))
        parts.append(_U32.pack(len(frame)))
        parts.append(frame)
        count += 1
    parts[2] = _U32.pack(count)
    return b"".join(parts)


def decode_batch(payload: bytes) -> ProfitBatch:
    try:
        magic, version, whole = _BATCH_HEAD.unpack_from(payload, 0)
        if magic != BATCH_MAGIC or version != BATCH_VERSION or whole not in (0, 1):
            raise DecodeError("not a profit batch of this version")
        offset = _BATCH_HEAD.size
        account, offset = _read_text16(payload, offset)
        (count,) = _U32.unpack_from(payload, offset)
        offset += _U32.size
        frames = []
        for _ in range(count):
            key, offset = _read_text16(payload, offset)
            (size,) = _U32.unpack_from(payload, offset)
            offset += _U32.size
            frame = payload[offset : offset + size]
            if len(frame) != size:
                raise DecodeError("truncated profit frame")
            offset += size
            frames.append((key, frame))
    except (struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(f"bad profit batch: {exc}") from None
    if offset != len(payload):
        raise DecodeError("trailing bytes after a profit batch")
    return ProfitBatch(account, tuple(frames), bool(whole))


# -- helpers --------------------------------------------------------------------------------


def _text16(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U16.pack(len(raw)) + raw


def _read_text16(payload: bytes, offset: int) -> tuple[str, int]:
    (size,) = _U16.unpack_from(payload, offset)
    offset += _U16.size
    raw = payload[offset : offset + size]
    if len(raw) != size:
        raise DecodeError("truncated text")
    return raw.decode("utf-8"), offset + size


def _json(payload: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise DecodeError("not a position message of this version")
    return body


def _list(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = body.get(name)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise DecodeError(f"{name} must be a list of objects")
    if len(items) > MAX_PER_MESSAGE:
        raise DecodeError(f"more than {MAX_PER_MESSAGE} {name} in one message")
    return items


def _number(body: dict[str, Any]) -> OpNumber:
    try:
        n = _int(body, "n")
    except KeyError:
        raise DecodeError("an op or answer without its number n") from None
    if n < 0:
        raise DecodeError("n must not be negative")
    return n


def _str(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be a string")
    return value


def _int(body: dict[str, Any], name: str) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{name} must be an integer")
    return value
