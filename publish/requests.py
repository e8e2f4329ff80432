"""One connection's requests: limits, parsing and the op dispatch.

``handle`` takes one received frame: it spends the connection's ops budget, refuses an
oversize request, parses it and ``serve``s it; every refusal is an ``error`` reply with
a stable code and spends the error budget, and a connection past that budget is closed
with 4029. Each op is served by the piece whose job it is: ``Credentials`` (auth),
``Subscriptions`` ((un)subscribe), ``PositionRequests`` (position ops), ``AdminRequests``
(admin ops).
"""

from __future__ import annotations

from collections.abc import Callable

from publish.admin import AdminRequests
from publish.counters import Counters
from publish.credentials import Credentials
from publish.exceptions import RequestError
from publish.outbox import Outbox
from publish.position_requests import PositionRequests
from publish.protocol import (
    AdminRequest,
    AuthRequest,
    CloseCode,
    ErrorCode,
    PingRequest,
    PositionCloseRequest,
    PositionOpenRequest,
    Request,
    SubscriptionRequest,
    encode_auth_ack,
    encode_error,
    encode_pong,
    parse_request,
)
from publish.ratelimit import TokenBucket
from publish.subscriptions import Subscriptions

Close = Callable[[CloseCode, str], bool]
"""Start closing the connection; False if it was closing already."""


class RequestHandler:
    """Serves the requests of one connection; see the module docstring."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        credentials: Credentials,
        subscriptions: Subscriptions,
        positions: PositionRequests,
        admin: AdminRequests,
        counters: Counters,
        close: Close,
        max_request_bytes: int,
        ops_per_second: float,
        ops_burst: int,
        errors_per_second: float,
        error_burst: int,
    ) -> None:
        self._outbox = outbox
        self._credentials = credentials
        self._subscriptions = subscriptions
        self._positions = positions
        self._admin = admin
        self._counters = counters
        self._close = close
        self._max_request_bytes = max_request_bytes
        self._ops_per_second = ops_per_second
        self._ops = TokenBucket(ops_per_second, ops_burst)
        self._errors = TokenBucket(errors_per_second, error_burst)

    def handle(self, raw: str | bytes) -> None:
        """Serve one request frame; every failure becomes an ``error`` reply. O(keys)."""
        if self._outbox.stopped:
            return
        try:
            if not self._ops.take():
                self._counters.rate_limited += 1
                raise RequestError(
                    ErrorCode.RATE_LIMITED,
                    f"more than {self._ops_per_second:g} requests per second",
                )
            if len(raw) > self._max_request_bytes:
                raise RequestError(
                    ErrorCode.TOO_LARGE,
                    f"a request may be at most {self._max_request_bytes} bytes",
                )
            self.serve(parse_request(raw))
        except RequestError as exc:
            self.refuse(exc)

    def serve(self, request: Request) -> None:
        """The op dispatch: one case per request type; ``RequestError`` refuses. Position
        ops come first: they are the ones a busy connection sends at a rate, and each case
        before theirs is an ``isinstance`` per op."""
        match request:
            case PositionOpenRequest() | PositionCloseRequest():
                self._positions.serve(request)
            case PingRequest():
                self._outbox.reply(encode_pong(request.id))
            case AuthRequest():
                claims = self._credentials.authenticate(request.token, request.id)
                self._outbox.reply(encode_auth_ack(request.id, claims.account, claims.expires_ns))
                self._subscriptions.resume()
            case SubscriptionRequest():
                self._subscriptions.serve(request)
            case AdminRequest():
                self._admin.serve(request)

    def refuse(self, exc: RequestError) -> None:
        """Answer ``exc`` with an error frame, or close the connection (4029) once it has
        used up its error budget."""
        if not self._errors.take():
            if self._close(CloseCode.TOO_MANY_ERRORS, "too many errors"):
                self._counters.error_closes += 1
            return
        self._counters.errors_sent += 1
        self._outbox.reply(encode_error(exc.code, exc.message, exc.request_id))
