"""HTTP routes served on the websocket port (``publish.server`` reads the request head).

``/health``                       200 healthy / 503 degraded, the same JSON body: every
                                  instrument's state, per-venue counts of states, and each
                                  added check's details (``add_health_check``: storage)
``/v1/bbo/<instrument>``          the instrument's ``bbo`` message (the same object as on /ws)
``/v1/book/<instrument>?depth=N`` its ``book`` message, top N levels per side (default 10)
``/v1/history/bbo/<instrument>``  stored BBO changes as NDJSON (``publish.history``, added
                                  by the runtime: it needs storage)

Routes live in a table: ``HttpRoutes.add(path, handler)`` for an exact path,
``add(prefix, handler, prefix=True)`` for a path family (the handler gets the rest of the
path in ``HttpRequest.tail``). A handler returns a whole ``Response``, or a
``StreamedResponse`` whose body the server writes as it is produced
(``write_streamed``). GET and HEAD are served (HEAD: the same headers, no body);
any other method is 405 with ``Allow: GET, HEAD``. Errors are JSON
``{"type":"error","code":...,"message":...}`` with the stable codes of
``publish.protocol.ErrorCode``: 404 ``not_found`` / ``unknown_instrument``, 400
``bad_request``, 401 ``auth_required`` / ``token_invalid`` / ``token_expired``, 403
``forbidden``, 405 ``method_not_allowed``, 503 ``not_live``. Every route reads immutable
registry values only.

Every route has an ``Access`` class, checked by ``authorize`` before its handler runs:
``PUBLIC`` (/health), ``MARKET_DATA`` (the default: /v1/*, and any route added without
saying otherwise) needs a token when ``[auth].market_data_requires_auth`` is on, and
``OPERATOR`` (/dashboard, /stats, /metrics) needs one when either setting is on; with
``[auth].operator_requires_auth`` the token must carry the ``operator`` role. A token is
``Authorization: Bearer <token>``; a page route (``token_in_query``: /dashboard) also
takes ``?token=``, since a browser cannot set that header when opening a page.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from book.instruments import venue_of
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState
from publish.auth import AuthPolicy, Claims
from publish.client import DEFAULT_BOOK_DEPTH
from publish.exceptions import TokenError
from publish.protocol import ErrorCode, encode_bbo, encode_book, encode_error

log = logging.getLogger(__name__)

BBO_PREFIX = "/v1/bbo/"
BOOK_PREFIX = "/v1/book/"
SERVED_METHODS = ("GET", "HEAD")


class Access(StrEnum):
    """Who may read a route (see the module docstring)."""

    PUBLIC = "public"
    MARKET_DATA = "market_data"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: the decoded ``path``, its ``query`` parameters, for a prefix route the
    rest of the path after the prefix (``tail``; empty for an exact route), its
    ``headers`` and ``method``."""

    path: str
    query: dict[str, list[str]]
    tail: str = ""
    headers: Headers = field(default_factory=Headers)
    method: str = "GET"


@dataclass(frozen=True, slots=True)
class StreamedResponse:
    """A response written as its body is produced: the head, then each chunk of ``body``
    as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``), then the last chunk. A body
    that fails part way is cut short without the last chunk, so the client can tell."""

    status: HTTPStatus
    content_type: str
    body: AsyncGenerator[bytes, None]

    def headers(self) -> Headers:
        return Headers(
            [
                ("Content-Type", self.content_type),
                ("Transfer-Encoding", "chunked"),
                ("Cache-Control", "no-store"),
                ("Connection", "close"),
            ]
        )

    def head(self) -> bytes:
        """The status line and headers, as written before the body."""
        return Response(self.status.value, self.status.phrase, self.headers()).serialize()


def http_chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (empty ``data``: the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


async def write_streamed(
    response: StreamedResponse,
    write: Callable[[bytes], None],
    drain: Callable[[], Awaitable[None]],
    closing: Callable[[], bool],
) -> bool:
    """Write ``response`` through ``write`` as its body comes, awaiting ``drain`` (the
    socket's flow control) between chunks and stopping if ``closing()`` (the client
    left). The first chunk is produced before anything is written, so a body that fails
    at once is answered 503 ``storage_unavailable`` instead. False when the body failed
    part way: the caller must then abort the connection (no last chunk is written)."""
    body = response.body
    try:
        try:
            first = await anext(body)
        except StopAsyncIteration:
            first = b""
        except Exception:
            log.warning("http: a streamed response failed before its first byte", exc_info=True)
            refusal = error_response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                ErrorCode.STORAGE_UNAVAILABLE,
                "storage could not be read; try again",
            )
            write(refusal.serialize())
            return True
        write(response.head())
        if first:
            write(http_chunk(first))
        async for chunk in body:
            if closing():
                return True  # the client went away
            await drain()
            write(http_chunk(chunk))
        write(http_chunk(b""))
        return True
    except Exception:
        log.warning("http: a streamed response was cut short", exc_info=True)
        return False
    finally:
        await body.aclose()


Handler = Callable[[HttpRequest], Response | StreamedResponse]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    access: Access
    token_in_query: bool


HealthCheck = Callable[[], tuple[bool, dict[str, object]]]
"""``() -> (healthy, details)`` of one more part of the server, shown on /health."""


def http_response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    """A complete HTTP response carrying ``body``."""
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, body: bytes) -> Response:
    """A complete HTTP response carrying ``body`` (already JSON-encoded)."""
    return http_response(status, body, "application/json")


def error_response(status: HTTPStatus, code: ErrorCode, message: str) -> Response:
    return json_response(status, encode_error(code, message))


def without_body(response: Response) -> Response:
    """The answer to HEAD: ``response``'s status and headers (its Content-Length too)."""
    return Response(response.status_code, response.reason_phrase, response.headers, b"")


def method_not_allowed(method: str) -> Response:
    response = error_response(
        HTTPStatus.METHOD_NOT_ALLOWED,
        ErrorCode.METHOD_NOT_ALLOWED,
        f"{method[:16]} is not served here; use GET or HEAD",
    )
    response.headers["Allow"] = ", ".join(SERVED_METHODS)
    return response


def authorize(
    policy: AuthPolicy | None, access: Access, request: HttpRequest, *, token_in_query: bool = False
) -> Response | None:
    """``None`` when ``request`` may read a route of ``access`` under ``policy``, else the
    401/403 response saying why. The one check of every HTTP route; a handler that serves
    something else than its route's access says (none does) calls it itself. O(1) plus
    one token verification when a token is needed."""
    if policy is None or access is Access.PUBLIC:
        return None
    operator_only = access is Access.OPERATOR and policy.operator_requires_auth
    if not (policy.market_data_requires_auth or operator_only):
        return None
    token = bearer_token(request, token_in_query=token_in_query)
    if token is None:
        return _unauthorized(ErrorCode.AUTH_REQUIRED, "this route needs a token", None)
    try:
        claims: Claims = policy.tokens.verify(token)
    except TokenError as exc:
        return _unauthorized(exc.code, exc.message, "invalid_token")
    if operator_only and not claims.operator:
        return error_response(
            HTTPStatus.FORBIDDEN, ErrorCode.FORBIDDEN, "this route needs an operator token"
        )
    return None


def bearer_token(request: HttpRequest, *, token_in_query: bool = False) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (or of ``?token=`` when allowed)."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if token_in_query and (given := request.query.get("token")):
        return given[-1]
    return None


def _unauthorized(code: ErrorCode, message: str, error: str | None) -> Response:
    response = error_response(HTTPStatus.UNAUTHORIZED, code, message)
    challenge = 'Bearer realm="marketcast"'
    response.headers["WWW-Authenticate"] = (
        challenge if error is None else f'{challenge}, error="{error}"'
    )
    return response


class HttpRoutes:
    """The route table. ``clock`` (ns since the epoch) stamps ``ts_send``; ``max_depth``
    is the deepest /v1/book (the levels snapshots capture); ``auth`` is checked by
    ``authorize`` for every route (``None``: everything is public)."""

    def __init__(
        self,
        registry: BookRegistry,
        *,
        clock: Callable[[], int] = time.time_ns,
        max_depth: int = 25,
        auth: AuthPolicy | None = None,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._max_depth = max_depth
        self._auth = auth
        self._exact: dict[str, Route] = {}
        self._prefixes: list[tuple[str, Route]] = []
        self._health_checks: dict[str, HealthCheck] = {}
        self.add("/health", self._health, access=Access.PUBLIC)
        self.add(BBO_PREFIX, self._bbo, prefix=True)
        self.add(BOOK_PREFIX, self._book, prefix=True)

    def add(
        self,
        path: str,
        handler: Handler,
        *,
        prefix: bool = False,
        access: Access = Access.MARKET_DATA,
        token_in_query: bool = False,
    ) -> None:
        """Serve ``GET path`` (or every path under ``path`` when ``prefix``) by ``handler``
        to whoever ``access`` lets in (``authorize``); ``token_in_query`` also takes the
        token from ``?token=`` (for a page a browser opens)."""
        route = Route(handler, access, token_in_query)
        if prefix:
            self._prefixes.append((path, route))
        else:
            self._exact[path] = route

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        """Show ``check``'s details under ``name`` on /health; unhealthy makes the status
        ``degraded``."""
        self._health_checks[name] = check

    def respond(
        self, target: str, headers: Headers | None = None, *, method: str = "GET"
    ) -> Response | StreamedResponse:
        """The response to ``method target`` (path and optional query). O(routes) to find
        the route; /health is O(instruments), the others O(1) or O(depth)."""
        if method not in SERVED_METHODS:
            return method_not_allowed(method)
        response = self._serve(target, Headers() if headers is None else headers, method)
        if method != "HEAD":
            return response
        if isinstance(response, StreamedResponse):  # its body is never started
            return Response(response.status.value, response.status.phrase, response.headers())
        return without_body(response)

    def _serve(self, target: str, headers: Headers, method: str) -> Response | StreamedResponse:
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        found = self._exact.get(path)
        tail = ""
        if found is None:
            for prefix, route in self._prefixes:
                if path.startswith(prefix):
                    found, tail = route, path.removeprefix(prefix)
                    break
            else:
                return error_response(
                    HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no route {path[:64]!r}"
                )
        request = HttpRequest(path, query, tail, headers, method)
        refusal = authorize(self._auth, found.access, request, token_in_query=found.token_in_query)
        return found.handler(request) if refusal is None else refusal

    def _health(self, request: HttpRequest) -> Response:
        statuses = self._registry.statuses()
        venues: dict[str, Counter[str]] = {}
        for status in statuses:
            venue = venue_of(status.instrument)
            venues.setdefault(venue, Counter())[status.state.value] += 1
        live = sum(status.state is InstrumentState.LIVE for status in statuses)
        failing = [] if live else ["no live instrument"]
        checks: dict[str, object] = {}
        for name, check in self._health_checks.items():
            ok, checks[name] = check()
            if not ok:
                failing.append(name)
        verdict = "degraded" if failing else "ok" if live == len(statuses) else "partial"
        body = orjson.dumps(
            {
                "status": verdict,
                "failing": failing,
                "live_instruments": live,
                **checks,
                "venues": {
                    venue: {state.value: counts[state.value] for state in InstrumentState}
                    for venue, counts in sorted(venues.items())
                },
                "instruments": {
                    status.instrument: {
                        "state": status.state.value,
                        "reason": status.reason,
                        "ts": status.ts,
                    }
                    for status in statuses
                },
            }
        )
        code = HTTPStatus.SERVICE_UNAVAILABLE if failing else HTTPStatus.OK
        return json_response(code, body)

    def _bbo(self, request: HttpRequest) -> Response:
        snapshot = self._live(request.tail)
        if not isinstance(snapshot, BookSnapshot):
            return snapshot
        return json_response(HTTPStatus.OK, encode_bbo(snapshot, self._clock()))

    def _book(self, request: HttpRequest) -> Response:
        most = self._max_depth
        given = request.query.get("depth")
        depth = min(DEFAULT_BOOK_DEPTH, most)
        if given is not None:
            text = given[-1]
            depth = int(text) if text.isascii() and text.isdigit() and len(text) < 6 else 0
        if not 1 <= depth <= most:
            return error_response(
                HTTPStatus.BAD_REQUEST,
                ErrorCode.BAD_REQUEST,
                f"depth must be an integer between 1 and {most}",
            )
        snapshot = self._live(request.tail)
        if not isinstance(snapshot, BookSnapshot):
            return snapshot
        return json_response(HTTPStatus.OK, encode_book(snapshot, depth, self._clock()))

    def _live(self, instrument: str) -> BookSnapshot | Response:
        """The instrument's live snapshot, or the 404/503 response saying why not."""
        status = self._registry.status(instrument)
        if status is None:
            return error_response(
                HTTPStatus.NOT_FOUND,
                ErrorCode.UNKNOWN_INSTRUMENT,
                f"unknown instrument {instrument[:64]!r}",
            )
        snapshot = self._registry.live_snapshot(instrument)
        if snapshot is None:
            return error_response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                ErrorCode.NOT_LIVE,
                f"{instrument} is {status.state.value} ({status.reason})",
            )
        return snapshot


MAX_HEAD_BYTES = 16 << 10
"""The largest request head (request line and headers) read; a longer one gets 431."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request line and headers (``parse_head``)."""

    method: str
    target: str
    headers: Headers


def head_end(buffer: bytes | bytearray) -> int:
    """The length of the request head at the start of ``buffer`` (through its blank
    line), or -1 while it is incomplete. O(len(buffer))."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    ends = [end + 4 for end in (crlf,) if end >= 0] + [end + 2 for end in (lf,) if end >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes | bytearray) -> RequestHead | Response:
    """The request line and headers of ``head`` (as ``head_end`` delimits it), or the 400
    response to a head that is not HTTP/1.x. Sans-I/O; O(len(head))."""
    lines = bytes(head).replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[0].isalpha():
        return _bad_request("not an HTTP/1.1 request line")
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return _bad_request("the request target must be ASCII (percent-encode it)")
    if not target.startswith("/"):
        return _bad_request("the request target must be a path")
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            return _bad_request("a malformed header line")
        headers[name.decode("latin-1")] = value.strip().decode("latin-1")
    return RequestHead(method, target, headers)


def _bad_request(message: str) -> Response:
    return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, message)


def head_too_large() -> Response:
    return error_response(
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        ErrorCode.TOO_LARGE,
        f"the request head is larger than {MAX_HEAD_BYTES} bytes",
    )
