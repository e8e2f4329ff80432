"""NATS decentralized auth for a test's nats-server: an operator, an account and users,
their JWTs signed with nkeys (``bus.nkeys``), the server's configuration (operator mode,
memory resolver) and a user's ``.creds`` file, as ``nsc`` would make them."""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bus.nkeys import (
    PREFIX_ACCOUNT,
    PREFIX_OPERATOR,
    PREFIX_USER,
    KeyPair,
    creds_text,
)

UNLIMITED = -1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer: KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2) of ``subject`` signed by ``issuer``."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha256(orjson.dumps(claims)).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(orjson.dumps({"typ": "JWT", "alg": "ed25519-nkey"}))
    body = f"{header}.{_b64(orjson.dumps(claims))}"
    return f"{body}.{_b64(issuer.sign(body.encode()))}"


@dataclass
class Operator:
    """An operator with one account; ``user_creds`` issues its users."""

    operator: KeyPair = field(default_factory=lambda: KeyPair.generate(PREFIX_OPERATOR))
    account: KeyPair = field(default_factory=lambda: KeyPair.generate(PREFIX_ACCOUNT))

    def server_config(self) -> str:
        operator_jwt = jwt(self.operator, self.operator.public_key, "op", {"type": "operator"})
        limits = {
            "subs": UNLIMITED,
            "data": UNLIMITED,
            "payload": UNLIMITED,
            "imports": UNLIMITED,
            "exports": UNLIMITED,
            "wildcards": True,
            "conn": UNLIMITED,
            "leaf": UNLIMITED,
        }
        account_jwt = jwt(
            self.operator,
            self.account.public_key,
            "marketcast",
            {"type": "account", "limits": limits, "default_permissions": {"pub": {}, "sub": {}}},
        )
        return (
            f"operator: {operator_jwt}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{\n  {self.account.public_key}: {account_jwt}\n}}\n"
        )

    def user_creds(self, path: Path, *, signer: KeyPair | None = None) -> Path:
        """A user's ``.creds`` file (its JWT signed by ``signer``, default the account)."""
        user = KeyPair.generate(PREFIX_USER)
        issuer = signer if signer is not None else self.account
        claims = {
            "type": "user",
            "pub": {},
            "sub": {},
            "subs": UNLIMITED,
            "data": UNLIMITED,
            "payload": UNLIMITED,
        }
        if signer is not None:
            claims["issuer_account"] = self.account.public_key
        path.touch(mode=0o600)
        path.write_text(creds_text(jwt(issuer, user.public_key, "node", claims), user.encoded_seed))
        return path
