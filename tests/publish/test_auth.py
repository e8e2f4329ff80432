"""Tokens (HS256 JWTs bound to an account) and the ``auth`` op: every refusal by code."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from publish.auth import AuthPolicy, Claims, TokenAuthority, load_secret
from publish.client import ClientSession
from publish.exceptions import RequestError, SecretFileError, TokenError
from publish.fanout import Fanout
from publish.protocol import AuthRequest, ErrorCode
from tests.publish.support import (
    HandSink,
    ack,
    error,
    new_registry,
    receive,
    running,
    send,
)

SECRET = b"0123456789abcdef-test-secret"
NOW = 1_700_000_000.0


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_round_trips_to_its_account_and_expiry() -> None:
    tokens = TokenAuthority(SECRET, clock=Clock())
    token = tokens.issue("acct-1", ttl=60)
    header, payload, _ = token.split(".")
    assert orjson.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}
    assert orjson.loads(base64.urlsafe_b64decode(payload + "==")) == {
        "sub": "acct-1",
        "iat": int(NOW),
        "exp": int(NOW) + 60,
    }
    assert tokens.verify(token) == Claims("acct-1", int(NOW) + 60)


def forged_tokens(tokens: TokenAuthority) -> list[str]:
    token = tokens.issue("acct-1", ttl=60)
    header, payload, signature = token.split(".")
    other_payload = b64(orjson.dumps({"sub": "acct-2", "iat": int(NOW), "exp": int(NOW) + 60}))
    none_header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return [
        f"{header}.{other_payload}.{signature}",  # claims swapped under the old signature
        f"{none_header}.{payload}.",  # alg none, no signature
        f"{header}.{payload}.{signature[:-2]}",  # truncated signature
        f"{header}.{payload}.{signature}x",  # not base64url any more
        TokenAuthority(b"another-secret-of-16+", clock=Clock()).issue("acct-1", ttl=60),
        "not-a-token",
        "a.b.c.d",
        "é.é.é",
        "..",
    ]


def test_forged_and_malformed_tokens_are_invalid() -> None:
    tokens = TokenAuthority(SECRET, clock=Clock())
    for token in forged_tokens(tokens):
        with pytest.raises(TokenError) as refused:
            tokens.verify(token)
        assert refused.value.code is ErrorCode.TOKEN_INVALID, token


def test_a_correctly_signed_token_must_still_be_hs256_with_account_and_expiry() -> None:
    tokens = TokenAuthority(SECRET, clock=Clock())

    def signed(header: object, claims: object) -> str:
        signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
        return f"{signing_input}.{b64(tokens._sign(signing_input))}"

    hs256 = {"alg": "HS256"}
    cases = {
        signed({"alg": "HS512"}, {"sub": "a", "exp": 2 * NOW}): "only HS256 tokens are accepted",
        signed(hs256, {"exp": 2 * NOW}): "the token names no account",
        signed(hs256, {"sub": "", "exp": 2 * NOW}): "the token names no account",
        signed(hs256, {"sub": "a"}): "the token has no expiry",
        signed(hs256, {"sub": "a", "exp": True}): "the token has no expiry",
        signed(hs256, ["sub", "a"]): "the token is not a JWT",
        signed("HS256", {"sub": "a", "exp": 2 * NOW}): "the token is not a JWT",
    }
    for token, message in cases.items():
        with pytest.raises(TokenError) as refused:
            tokens.verify(token)
        assert (refused.value.code, refused.value.message) == (ErrorCode.TOKEN_INVALID, message)


def test_an_expired_token_is_refused_and_a_session_stops_acting_for_it() -> None:
    clock = Clock()
    tokens = TokenAuthority(SECRET, clock=clock)
    token = tokens.issue("acct-1", ttl=10)
    claims = tokens.verify(token)
    clock.now += 10
    assert not tokens.is_current(claims)
    with pytest.raises(TokenError) as refused:
        tokens.verify(token)
    assert (refused.value.code, refused.value.message) == (
        ErrorCode.TOKEN_EXPIRED,
        "the token has expired",
    )


def test_signatures_must_be_strict_canonical_base64url() -> None:
    tokens = TokenAuthority(SECRET, clock=Clock())
    token = tokens.issue("acct-1", ttl=60)
    header, payload, signature = token.split(".")
    raw = tokens._sign(f"{header}.{payload}")
    standard = base64.b64encode(raw).decode()  # the same bytes with + and / (and =)
    assert standard.rstrip("=") != signature, "the test needs a signature with + or /"
    last = signature[-1]
    # 32 bytes leave 2 unused bits in the last character: a different character that
    # decodes to the same bytes is a second spelling of the same signature.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) | 1]
    assert base64.urlsafe_b64decode(signature[:-1] + twin + "=") == raw
    for variant in (
        signature + "=",
        signature + "==",
        standard,
        standard.rstrip("="),
        signature[:-1] + twin,
        signature + "A",
        " " + signature,
    ):
        with pytest.raises(TokenError) as refused:
            tokens.verify(f"{header}.{payload}.{variant}")
        assert refused.value.code is ErrorCode.TOKEN_INVALID, variant
    assert tokens.verify(token).account == "acct-1"


def test_roles_are_claims_and_admin_implies_operator() -> None:
    tokens = TokenAuthority(SECRET, clock=Clock())
    expires = int(NOW) + 60
    assert tokens.verify(tokens.issue("ops", ttl=60, operator=True)) == Claims(
        "ops", expires, operator=True
    )
    admin = tokens.issue("root", ttl=60, admin=True)
    _, payload, _ = admin.split(".")
    assert orjson.loads(base64.urlsafe_b64decode(payload + "==")) == {
        "sub": "root",
        "iat": int(NOW),
        "exp": expires,
        "operator": True,
        "admin": True,
    }
    assert tokens.verify(admin) == Claims("root", expires, operator=True, admin=True)
    assert tokens.verify(tokens.issue("a", ttl=60)) == Claims("a", expires)


@pytest.mark.parametrize(
    "ttl", [1e30, float("inf"), float("nan"), -1.0, 0.0, 10 * 366 * 86_400 + 1]
)
def test_issue_refuses_a_ttl_that_is_not_a_sane_number_of_seconds(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl must be a number of seconds"):
        TokenAuthority(SECRET).issue("a", ttl=ttl)


def test_issue_checks_account_ttl_and_secret() -> None:
    tokens = TokenAuthority(SECRET)
    for account, ttl in (("", 60.0), ("x" * 129, 60.0), ("a", 0.0)):
        with pytest.raises(ValueError):
            tokens.issue(account, ttl=ttl)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TokenAuthority(b"short")


def test_load_secret_creates_a_private_file_once_and_reads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "marketcast.secret"
    first = load_secret(secret=None, secret_file=path)
    assert len(first) == 64 and int(first, 16) >= 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(secret=None, secret_file=path) == first
    assert load_secret(secret="given-secret-of-16", secret_file=path) == b"given-secret-of-16"


def test_a_secret_file_others_can_read_is_refused_unless_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "marketcast.secret"
    path.write_text("a-shared-secret-of-more-than-16\n")
    path.chmod(0o644)
    for create in (True, False):
        with pytest.raises(SecretFileError, match=r"readable by others \(mode 0644\)"):
            load_secret(secret=None, secret_file=path, create=create)
    with caplog.at_level("WARNING", logger="publish.auth"):
        secret = load_secret(secret=None, secret_file=path, allow_shared_file=True)
    assert secret == b"a-shared-secret-of-more-than-16"
    assert "readable by others" in caplog.text
    path.chmod(0o600)
    assert load_secret(secret=None, secret_file=path) == secret


def test_load_secret_without_create_never_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "marketcast.secret"
    with pytest.raises(SecretFileError, match="no token secret at"):
        load_secret(secret=None, secret_file=path, create=False)
    assert not path.exists()


async def test_require_account_refuses_none_expired_and_other_accounts() -> None:
    """The check positions and profit ops make: this connection acts for that account."""
    clock = Clock()
    tokens = TokenAuthority(SECRET, clock=clock)
    sink = HandSink()
    session = ClientSession(sink, Fanout(new_registry()), auth=AuthPolicy(tokens=tokens))

    def refusal(account: str) -> tuple[ErrorCode, object]:
        with pytest.raises(RequestError) as refused:
            session.credentials.require(account, 7)
        return refused.value.code, refused.value.request_id

    assert session.credentials.account is None
    assert refusal("acct-1") == (ErrorCode.AUTH_REQUIRED, 7)
    session.requests.serve(AuthRequest(1, tokens.issue("acct-1", ttl=30)))
    session.outbox.flush()
    assert sink.frames == [
        {
            "type": "ack",
            "id": 1,
            "op": "auth",
            "account": "acct-1",
            "expires": (int(NOW) + 30) * 1_000_000_000,
        }
    ]
    assert session.credentials.account == "acct-1"
    session.credentials.require("acct-1", 8)
    assert refusal("acct-2") == (ErrorCode.FORBIDDEN, 7)
    # A token for another account never rebinds the connection.
    with pytest.raises(RequestError) as rebind:
        session.requests.serve(AuthRequest(2, tokens.issue("acct-2", ttl=30)))
    assert (rebind.value.code, rebind.value.message) == (
        ErrorCode.FORBIDDEN,
        "this connection already acts for another account",
    )
    assert session.credentials.account == "acct-1"
    # A fresh token for the same account extends it; past its expiry the session is anonymous.
    clock.now += 20
    session.requests.serve(AuthRequest(3, tokens.issue("acct-1", ttl=30)))
    clock.now += 20
    assert session.credentials.account == "acct-1"
    clock.now += 10
    assert session.credentials.account is None
    assert refusal("acct-1") == (ErrorCode.AUTH_REQUIRED, 7)


async def test_auth_over_the_wire_every_refusal_then_market_data_once_authenticated() -> None:
    clock = Clock()
    tokens = TokenAuthority(SECRET, clock=clock)
    policy = AuthPolicy(tokens=tokens, market_data_requires_auth=True)
    expired = tokens.issue("acct-1", ttl=5)
    clock.now += 5
    async with running(auth=policy) as m, connect(m.server.url) as ws:
        await send(ws, op="subscribe", id=1, channel="status")
        assert await receive(ws) == error(
            1, "auth_required", "this server requires auth for market data"
        )
        await send(ws, op="ping", id=2)  # ping never needs auth
        assert await receive(ws) == {"type": "pong", "id": 2}
        await send(ws, op="auth", id=3, token=expired)
        assert await receive(ws) == error(3, "token_expired", "the token has expired")
        for request_id, token in enumerate(forged_tokens(tokens), start=10):
            await send(ws, op="auth", id=request_id, token=token)
            reply = await receive(ws)
            assert (reply["id"], reply["code"]) == (request_id, "token_invalid")
        for token in (None, "", 5, ["x"]):
            await send(ws, op="auth", id=4, token=token)
            assert await receive(ws) == error(4, "bad_request", "token must be a non-empty string")
        await send(ws, op="auth", id=5, token=tokens.issue("acct-1", ttl=60))
        assert await receive(ws) == {
            "type": "ack",
            "id": 5,
            "op": "auth",
            "account": "acct-1",
            "expires": int(clock.now + 60) * 1_000_000_000,
        }
        await send(ws, op="auth", id=6, token=tokens.issue("acct-2", ttl=60))
        assert await receive(ws) == error(
            6, "forbidden", "this connection already acts for another account"
        )
        await send(ws, op="subscribe", id=7, channel="status")
        assert await receive(ws) == ack(7, "status")
    assert m.fanout.counters.auth_failures == 1 + len(forged_tokens(tokens)) + 1


async def test_without_a_policy_no_token_is_accepted_and_market_data_is_public() -> None:
    async with running() as m, connect(m.server.url) as ws:
        await send(ws, op="auth", id=1, token=TokenAuthority(SECRET).issue("a", ttl=60))
        assert await receive(ws) == error(1, "token_invalid", "this server accepts no tokens")
        await send(ws, op="subscribe", id=2, channel="status")
        assert await receive(ws) == ack(2, "status")
