"""The token authority and auth policy of ``[auth]``, for the server and ``marketcast token``."""

from __future__ import annotations

from app.exceptions import ConfigError
from app.settings import Settings
from publish.auth import AuthPolicy, TokenAuthority, load_secret
from publish.exceptions import SecretFileError


def auth_policy(settings: Settings, *, create_secret: bool = True) -> AuthPolicy:
    """The auth policy of ``[auth]``. The server creates the secret file on first use
    (``create_secret``); ``marketcast token`` never does: it must sign with the secret
    the server uses, so a missing file is a ``ConfigError`` with a hint."""
    path = settings.secret_path
    try:
        secret = load_secret(
            secret=settings.auth.secret,
            secret_file=path,
            create=create_secret,
            allow_shared_file=settings.auth.allow_shared_secret_file,
        )
    except SecretFileError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"token secret file {path}: {exc.strerror}") from exc
    try:
        tokens = TokenAuthority(secret)
    except ValueError as exc:
        raise ConfigError(f"[auth]: {exc}") from exc
    return AuthPolicy(
        tokens=tokens,
        market_data_requires_auth=settings.auth.market_data_requires_auth,
        operator_requires_auth=settings.auth.operator_requires_auth,
    )
