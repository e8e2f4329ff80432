"""Who one connection acts for: its verified token, and what happens when it expires.

``authenticate`` verifies a token (``auth`` op) and binds the connection to its account
for good (a token for another account is ``forbidden``; a fresh one for the same account
extends it). One timer per token expiry, nothing per message: when it fires,
``on_expired`` is called (the session stops the streams that needed the token and tells
the client), and the connection is anonymous until the next ``auth``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from publish.auth import AuthPolicy, Claims
from publish.counters import Counters
from publish.exceptions import RequestError, TokenError
from publish.protocol import ErrorCode, RequestId


class Credentials:
    """The auth state of one connection. ``policy`` ``None``: no token is accepted (every
    ``auth`` fails ``token_invalid``) and market data is public."""

    def __init__(
        self,
        policy: AuthPolicy | None,
        counters: Counters,
        *,
        on_expired: Callable[[], None] = lambda: None,
    ) -> None:
        self._policy = policy
        self._counters = counters
        self._on_expired = on_expired
        self._claims: Claims | None = None
        self._lapsed = False
        """Set when the expiry timer fired (the loop's clock may run a hair ahead of the
        tokens' clock): the connection is anonymous from then on, whatever ``exp`` says."""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def account(self) -> str | None:
        """The account this connection acts for: set by a successful ``authenticate``,
        ``None`` before it and once its token has expired."""
        claims = self._claims
        if (
            claims is None
            or self._lapsed
            or self._policy is None
            or not self._policy.tokens.is_current(claims)
        ):
            return None
        return claims.account

    @property
    def admin_account(self) -> str | None:
        """The account, when its token has the ``admin`` role (and is current)."""
        account = self.account
        claims = self._claims
        return account if account is not None and claims is not None and claims.admin else None

    @property
    def market_data_allowed(self) -> bool:
        """Market data is public, or this connection acts for an account."""
        policy = self._policy
        return policy is None or not policy.market_data_requires_auth or self.account is not None

    def authenticate(self, token: str, request_id: RequestId) -> Claims:
        """Verify ``token`` and act for its account until it expires; ``RequestError``
        (``token_invalid``, ``token_expired``, ``forbidden``) refuses."""
        if self._policy is None:
            raise RequestError(ErrorCode.TOKEN_INVALID, "this server accepts no tokens", request_id)
        tokens = self._policy.tokens
        try:
            claims = tokens.verify(token)
        except TokenError as exc:
            self._counters.auth_failures += 1
            raise RequestError(exc.code, exc.message, request_id) from None
        if self._claims is not None and self._claims.account != claims.account:
            self._counters.auth_failures += 1
            raise RequestError(
                ErrorCode.FORBIDDEN, "this connection already acts for another account", request_id
            )
        self._claims = claims
        self._lapsed = False
        self._start_timer(tokens.seconds_left(claims))
        return claims

    def require(self, account: str, request_id: RequestId) -> None:
        """Refuse (``RequestError``) unless the connection acts for ``account``:
        ``auth_required`` without a current token, ``forbidden`` for another account."""
        current = self.account
        if current is None:
            raise RequestError(
                ErrorCode.AUTH_REQUIRED, "authenticate first (op auth, unexpired token)", request_id
            )
        if current != account:
            raise RequestError(
                ErrorCode.FORBIDDEN, "this connection acts for another account", request_id
            )

    def close(self) -> None:
        """Stop the expiry timer (the connection ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start_timer(self, seconds: float) -> None:
        self.close()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven by hand, outside a loop: expiry is checked per request
            return
        self._timer = loop.call_later(max(seconds, 0.0), self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._lapsed = True
        self._on_expired()
