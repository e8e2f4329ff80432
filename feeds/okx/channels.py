"""OKX's order-book channels and what sets them apart.

=================  ======  ========  ===========================================
channel            levels  push      messages
=================  ======  ========  ===========================================
``books``          400     100 ms    snapshot, then updates (seqId chain, checksum)
``books-l2-tbt``   400     10 ms     as ``books``; needs a logged-in connection
``books50-l2-tbt`` 50      10 ms     as ``books``; needs a logged-in connection
``books5``         5       100 ms    a whole 5-level book each time (seqId)
``bbo-tbt``        1       10 ms     the best bid and ask each time (seqId)
=================  ======  ========  ===========================================

Incremental channels keep the seqId/prevSeqId chain and, when non-zero, the CRC32
checksum of the best 25 levels; the whole-book channels replace the book with every
message. Tick-by-tick book channels are for VIP tiers, on a connection that logged in
with an API key (``login_frame``); the connection subscribes only once OKX has
acknowledged the login (``login_answer``)::

    {"event":"login","code":"0","msg":"","connId":"a4d3ae55"}
    {"event":"error","code":"60009","msg":"Login failed.","connId":"a4d3ae55"}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from enum import StrEnum

import orjson

from feeds.venue import HandshakeAnswer


class OkxChannel(StrEnum):
    BOOKS = "books"
    BOOKS_L2_TBT = "books-l2-tbt"
    BOOKS50_L2_TBT = "books50-l2-tbt"
    BOOKS5 = "books5"
    BBO_TBT = "bbo-tbt"


@dataclass(frozen=True, slots=True)
class ChannelRules:
    depth: int
    push_interval: float
    incremental: bool
    needs_login: bool


RULES: dict[OkxChannel, ChannelRules] = {
    OkxChannel.BOOKS: ChannelRules(400, 0.1, incremental=True, needs_login=False),
    OkxChannel.BOOKS_L2_TBT: ChannelRules(400, 0.01, incremental=True, needs_login=True),
    OkxChannel.BOOKS50_L2_TBT: ChannelRules(50, 0.01, incremental=True, needs_login=True),
    OkxChannel.BOOKS5: ChannelRules(5, 0.1, incremental=False, needs_login=False),
    OkxChannel.BBO_TBT: ChannelRules(1, 0.01, incremental=False, needs_login=False),
}
BOOK_CHANNELS = frozenset(RULES)
LOGIN_PATH = "/users/self/verify"


@dataclass(frozen=True, slots=True)
class OkxCredentials:
    """An OKX API key. ``repr`` shows the key's first characters only: secrets never
    reach a log line."""

    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    passphrase: str = field(repr=False)

    def __repr__(self) -> str:
        return f"OkxCredentials(api_key={self.api_key[:4]}...)"


def login_sign(secret: str, timestamp: str) -> str:
    """OKX's login signature: base64(HMAC-SHA256(secret, timestamp + GET + path))."""
    digest = hmac.new(
        secret.encode(), f"{timestamp}GET{LOGIN_PATH}".encode(), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode()


def login_frame(credentials: OkxCredentials, timestamp: str) -> str:
    """``{"op":"login","args":[{apiKey, passphrase, timestamp, sign}]}``; ``timestamp``
    is Unix seconds as text."""
    arg = {
        "apiKey": credentials.api_key,
        "passphrase": credentials.passphrase,
        "timestamp": timestamp,
        "sign": login_sign(credentials.secret, timestamp),
    }
    return orjson.dumps({"op": "login", "args": [arg]}).decode()


def login_answer(frame: str | bytes) -> HandshakeAnswer | None:
    """OKX's answer to ``login``: accepted on ``{"event":"login","code":"0"}``, refused on
    any ``error`` event (60009 login failed, 60024 wrong passphrase, ...) or a login event
    with another code; ``None`` for any other frame (``pong``, a notice)."""
    if frame in ("pong", b"pong"):
        return None
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    event, code = message.get("event"), str(message.get("code", ""))
    if event == "login" and code == "0":
        return HandshakeAnswer(accepted=True)
    if event in ("login", "error"):
        return HandshakeAnswer(accepted=False, code=code, detail=str(message.get("msg", "")))
    return None
