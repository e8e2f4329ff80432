"""HMAC-signed tokens bound to an account, with expiry: JWTs signed with HS256 (RFC 7519).

A token is ``base64url(header).base64url(claims).base64url(HMAC-SHA256(secret, both))``
with claims ``{"sub": account, "iat": issued, "exp": expires}`` (seconds since the epoch),
plus ``"operator": true`` / ``"admin": true`` for the roles below, so any JWT library can
issue or read one given the secret. ``marketcast token --account A`` issues them; a
connection presents one with ``{"op":"auth","token":...}`` (an HTTP request with
``Authorization: Bearer <token>``) and then acts for that account until the token expires.

Roles: an ``operator`` token may read the operator pages (``/dashboard``, ``/stats``,
``/metrics``) when ``[auth].operator_requires_auth`` is on; an ``admin`` token may also
run the admin ops over the websocket, and counts as an operator.

Only HS256 is accepted (the header is checked, so ``"alg":"none"`` or a public-key
algorithm can never stand in for the secret), the signature is compared in constant
time, every part must be strict base64url (no padding, no ``+``/``/``, canonical), and
every refusal is a ``TokenError`` with a stable code: ``token_invalid`` (malformed,
forged, wrong secret) or ``token_expired``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from publish.exceptions import SecretFileError, TokenError
from publish.protocol import ErrorCode

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16
MAX_ACCOUNT_CHARS = 128
MAX_TTL_SECONDS = 10 * 366 * 86_400
"""The longest a token may be valid (ten years): ``exp`` stays a small integer."""
_HEADER = {"alg": "HS256", "typ": "JWT"}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 section 2): only ``A-Z a-z 0-9 - _``,
    and only the one canonical spelling of the bytes (unused trailing bits are zero), so
    a token has exactly one accepted form."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError(ErrorCode.TOKEN_INVALID, "the token is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError(ErrorCode.TOKEN_INVALID, "the token is not base64url") from exc
    if _b64encode(data) != text:
        raise TokenError(ErrorCode.TOKEN_INVALID, "the token is not canonical base64url")
    return data


_ENCODED_HEADER = _b64encode(orjson.dumps(_HEADER))


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: the account, its expiry (seconds since the epoch) and its
    roles (``admin`` implies ``operator``)."""

    account: str
    expires: int
    operator: bool = False
    admin: bool = False

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

    def issue(
        self, account: str, *, ttl: float, operator: bool = False, admin: bool = False
    ) -> str:
        """A token for ``account`` valid ``ttl`` seconds from now (at most
        ``MAX_TTL_SECONDS``), with the ``operator``/``admin`` roles when asked."""
        if not account or len(account) > MAX_ACCOUNT_CHARS:
            raise ValueError(f"an account is 1..{MAX_ACCOUNT_CHARS} characters")
        if not math.isfinite(ttl) or not 0 < ttl <= MAX_TTL_SECONDS:
            raise ValueError(
                f"ttl must be a number of seconds above 0 and at most {MAX_TTL_SECONDS} "
                f"(ten years), got {ttl}"
            )
        now = self._clock()
        claims: dict[str, object] = {"sub": account, "iat": int(now), "exp": int(now + ttl)}
        if operator or admin:
            claims["operator"] = True
        if admin:
            claims["admin"] = True
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
            operator, admin = claims.get("operator", False), claims.get("admin", False)
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise TokenError(ErrorCode.TOKEN_INVALID, "the token is not a JWT") from exc
        if algorithm != _HEADER["alg"]:
            raise TokenError(ErrorCode.TOKEN_INVALID, "only HS256 tokens are accepted")
        if not isinstance(account, str) or not account:
            raise TokenError(ErrorCode.TOKEN_INVALID, "the token names no account")
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise TokenError(ErrorCode.TOKEN_INVALID, "the token has no expiry")
        if not isinstance(operator, bool) or not isinstance(admin, bool):
            raise TokenError(ErrorCode.TOKEN_INVALID, "the token's roles must be booleans")
        result = Claims(account, expires, operator=operator or admin, admin=admin)
        if not self.is_current(result):
            raise TokenError(ErrorCode.TOKEN_EXPIRED, "the token has expired")
        return result

    def is_current(self, claims: Claims) -> bool:
        """True until ``claims`` expire."""
        return self._clock() < claims.expires

    def seconds_left(self, claims: Claims) -> float:
        """Seconds until ``claims`` expire (0 or less: expired)."""
        return claims.expires - self._clock()

    def _sign(self, signing_input: str) -> bytes:
        data = signing_input.encode("utf-8", "surrogatepass")  # a forged token may hold anything
        return hmac.new(self._secret, data, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthPolicy:
    """How the server authenticates connections (config ``[auth]``)."""

    tokens: TokenAuthority
    market_data_requires_auth: bool = False
    """When true, subscribing to any market-data channel needs an ``auth`` first, and so
    does every HTTP market-data route (``Authorization: Bearer <token>``)."""
    operator_requires_auth: bool = False
    """When true, the operator pages (/dashboard, /stats, /metrics) need a token with the
    ``operator`` (or ``admin``) role."""


def load_secret(
    *,
    secret: str | None,
    secret_file: Path,
    create: bool = True,
    allow_shared_file: bool = False,
) -> bytes:
    """The signing secret: ``secret`` when given, else the contents of ``secret_file``,
    which is created (mode 0600, 32 random bytes as hex) if it does not exist yet and
    ``create`` (the server) — never by a command that only issues tokens, which would
    sign with a secret no server uses.

    A secret file that group or others may read is refused (``SecretFileError``) unless
    ``allow_shared_file``, and then logged as a warning.
    """
    if secret is not None:
        return secret.encode()
    if not create:
        return _read_secret_file(secret_file, allow_shared_file=allow_shared_file)
    try:
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret_file(secret_file, allow_shared_file=allow_shared_file)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        generated = secrets.token_hex(32)
        out.write(generated + "\n")
    return generated.encode()


def _read_secret_file(path: Path, *, allow_shared_file: bool) -> bytes:
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read()
    except FileNotFoundError:
        raise SecretFileError(
            f"no token secret at {path}: the server creates it on its first start; run "
            "this with the server's --config (or in its directory), or set [auth].secret "
            "(MARKETCAST_AUTH__SECRET)"
        ) from None
    if mode & 0o077:
        shared = f"token secret file {path} is readable by others (mode {mode & 0o777:04o})"
        if not allow_shared_file:
            raise SecretFileError(
                f"{shared}: chmod 600 it, or set [auth].allow_shared_secret_file = true"
            )
        log.warning("%s; anyone who can read it can issue tokens", shared)
    return text.strip()
