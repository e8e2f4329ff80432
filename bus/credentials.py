"""How a node logs in to NATS (``[bus]``): user and password, a token, or a ``.creds``
file (user JWT + nkey), and TLS (a CA file; a client certificate and key). ``BusLink``
passes ``connect_options()`` to every nats-py connect.

Secrets never leave this object except into that connect: ``describe()`` (for logs,
banners, /health) names the method and files only, ``repr`` hides the password and
token, and ``redact_url`` takes a password out of a ``nats://user:pass@host`` URL.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bus.exceptions import CredentialsError


@dataclass(frozen=True, slots=True)
class BusCredentials:
    """``[bus]``'s login and TLS keys; all empty: no login, TLS only for ``tls://``."""

    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    creds_file: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @property
    def method(self) -> str:
        """``user``, ``token``, ``creds`` or ``none``."""
        if self.creds_file:
            return "creds"
        if self.token:
            return "token"
        return "user" if self.user else "none"

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)

    def describe(self) -> str:
        """How it logs in, without a secret: ``user 'marketcast'``, ``token``,
        ``creds file /etc/nats/edge.creds``, ``no credentials``; and TLS."""
        method = {
            "user": f"user {self.user!r}",
            "token": "token",
            "creds": f"creds file {self.creds_file}",
            "none": "no credentials",
        }[self.method]
        if not self.tls:
            return method
        client = " and a client certificate" if self.tls_cert_file else ""
        return f"{method}, TLS (CA {self.tls_ca_file or 'system'}{client})"

    def keys(self) -> str:
        """The ``[bus]`` keys that say how it logs in (for error messages)."""
        return {
            "user": "[bus].user and [bus].password",
            "token": "[bus].token",
            "creds": "[bus].creds_file",
            "none": "no [bus] credentials",
        }[self.method]

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments of nats-py's ``Client.connect`` (read at every connect, so a
        renewed ``.creds`` file or certificate is picked up); ``CredentialsError`` when a
        file cannot be used."""
        options: dict[str, Any] = {}
        if self.user:
            options["user"] = self.user
            options["password"] = self.password
        if self.token:
            options["token"] = self.token
        if self.creds_file:
            jwt, sign = self._creds()
            options["user_jwt_cb"] = jwt
            options["signature_cb"] = sign
        if self.tls:
            options["tls"] = self.ssl_context()
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting ``tls_ca_file`` (none: the system's CAs), with the
        client certificate when set."""
        try:
            context = ssl.create_default_context(cafile=self.tls_ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise CredentialsError(
                f"[bus].tls_ca_file {self.tls_ca_file}: cannot load it ({_reason(exc)})"
            ) from None
        if self.tls_cert_file:
            try:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise CredentialsError(
                    f"[bus].tls_cert_file {self.tls_cert_file} / [bus].tls_key_file "
                    f"{self.tls_key_file}: cannot load them ({_reason(exc)})"
                ) from None
        return context

    def _creds(self) -> tuple[Callable[[], bytes], Callable[[str], bytes]]:
        from bus.nkeys import read_creds  # cryptography: only for .creds files

        creds = read_creds(self.creds_file)  # checked now: a bad file fails this connect
        return creds.jwt.encode, creds.sign_nonce

    def check(self) -> None:
        """Load every file now (a ``CredentialsError`` naming the key if one fails)."""
        self.connect_options()


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


def redact_url(url: str) -> str:
    """``url`` without its password or token (``nats://user:***@host:4222``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    if parts.password is None:
        return parts._replace(netloc=f"***@{host}").geturl()  # a token as the user part
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def redact_urls(urls: Sequence[str]) -> str:
    """``urls`` as one line for logs and banners, each redacted."""
    return ", ".join(redact_url(url) for url in urls)


def url_has_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return parts.username is not None or parts.password is not None
