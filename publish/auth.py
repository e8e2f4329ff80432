"""HMAC-signed tokens bound to an account, with expiry: JWTs signed with HS256 (RFC 7519).

A token is ``base64url(header).base64url(claims).base64url(HMAC-SHA256(secret, both))``
with claims ``{"sub": account, "iat": issued, "exp": expires}`` (seconds since the epoch),
so any JWT library can issue or read one given the secret. ``marketcast token --account
A`` issues them; a connection presents one with ``{"op":"auth","token":...}`` and then
acts for that account until the token expires.

Only HS256 is accepted (the header is checked, so ``"alg":"none"`` or a public-key
algorithm can never stand in for the secret), the signature is compared in constant
time, and every refusal is a ``TokenError`` with a stable code: ``token_invalid``
(malformed, forged, wrong secret) or ``token_expired``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from publish.exceptions import TokenError
from publish.protocol import ErrorCode

MIN_SECRET_BYTES = 16
MAX_ACCOUNT_CHARS = 128
_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url without padding: any other character is an error."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TokenError(ErrorCode.TOKEN_INVALID, "the token is not base64url") from exc


_ENCODED_HEADER = _b64encode(orjson.dumps(_HEADER))


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: the account and its expiry (seconds since the epoch)."""

    account: str
    expires: int

    @property
    def expires_ns(self) -> int:
        return self.expires * 1_000_000_000


class TokenAuthority:
    """Issues and verifies tokens with one secret. ``clock`` is seconds since the epoch.

    ``verify`` costs one HMAC-SHA256 over ~150 bytes plus two small JSON decodes (a few
    µs); it runs once per ``auth`` request, never per message.
    """

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._clock = clock

    def issue(self, account: str, *, ttl: float) -> str:
        """A token for ``account`` valid ``ttl`` seconds from now."""
        if not account or len(account) > MAX_ACCOUNT_CHARS:
            raise ValueError(f"an account is 1..{MAX_ACCOUNT_CHARS} characters")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = self._clock()
        claims = {"sub": account, "iat": int(now), "exp": int(now + ttl)}
        signing_input = f"{_ENCODED_HEADER}.{_b64encode(orjson.dumps(claims))}"
        return f"{signing_input}.{_b64encode(self._sign(signing_input))}"

    def verify(self, token: str) -> Claims:
        """The token's claims; ``TokenError`` if it is malformed, forged or expired."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError(ErrorCode.TOKEN_INVALID, "a token has three dot-separated parts")
        header, payload, signature = parts
        if not hmac.compare_digest(self._sign(f"{header}.{payload}"), _b64decode(signature)):
            raise TokenError(ErrorCode.TOKEN_INVALID, "the token's signature does not match")
        try:
            algorithm = orjson.loads(_b64decode(header)).get("alg")
            claims = orjson.loads(_b64decode(payload))
            account, expires = claims.get("sub"), claims.get("exp")
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise TokenError(ErrorCode.TOKEN_INVALID, "the token is not a JWT") from exc
        if algorithm != _HEADER["alg"]:
            raise TokenError(ErrorCode.TOKEN_INVALID, "only HS256 tokens are accepted")
        if not isinstance(account, str) or not account:
            raise TokenError(ErrorCode.TOKEN_INVALID, "the token names no account")
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise TokenError(ErrorCode.TOKEN_INVALID, "the token has no expiry")
        result = Claims(account, expires)
        if not self.is_current(result):
            raise TokenError(ErrorCode.TOKEN_EXPIRED, "the token has expired")
        return result

    def is_current(self, claims: Claims) -> bool:
        """True until ``claims`` expire."""
        return self._clock() < claims.expires

    def _sign(self, signing_input: str) -> bytes:
        data = signing_input.encode("utf-8", "surrogatepass")  # a forged token may hold anything
        return hmac.new(self._secret, data, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthPolicy:
    """How the server authenticates connections (config ``[auth]``)."""

    tokens: TokenAuthority
    market_data_requires_auth: bool = False
    """When true, subscribing to any market-data channel needs an ``auth`` first."""


def load_secret(*, secret: str | None, secret_file: Path) -> bytes:
    """The signing secret: ``secret`` when given, else the contents of ``secret_file``,
    which is created (mode 0600, 32 random bytes as hex) if it does not exist yet."""
    if secret is not None:
        return secret.encode()
    try:
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return secret_file.read_text(encoding="ascii").strip().encode()
    with os.fdopen(fd, "w", encoding="ascii") as out:
        generated = secrets.token_hex(32)
        out.write(generated + "\n")
    return generated.encode()
