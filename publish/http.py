"""HTTP GET routes served on the websocket port (through websockets' ``process_request``).

``/health``                       every instrument's state and per-venue counts of states,
                                  plus each added check's (``add_health_check``: storage)
``/v1/bbo/<instrument>``          the instrument's ``bbo`` message (the same object as on /ws)
``/v1/book/<instrument>?depth=N`` its ``book`` message, top N levels per side (default 10)

Routes live in a table: ``HttpRoutes.add(path, handler)`` for an exact path,
``add(prefix, handler, prefix=True)`` for a path family (the handler gets the rest of the
path in ``HttpRequest.tail``). Errors are JSON ``{"type":"error","code":...,"message":...}``
with the stable codes of ``publish.protocol.ErrorCode``: 404 ``not_found`` /
``unknown_instrument``, 400 ``bad_request``, 503 ``not_live``. Every route reads
immutable registry values only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from book.instruments import venue_of
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState
from publish.client import DEFAULT_BOOK_DEPTH
from publish.protocol import ErrorCode, encode_bbo, encode_book, encode_error

BBO_PREFIX = "/v1/bbo/"
BOOK_PREFIX = "/v1/book/"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One GET: the decoded ``path``, its ``query`` parameters, and for a prefix route the
    rest of the path after the prefix (``tail``; empty for an exact route)."""

    path: str
    query: dict[str, list[str]]
    tail: str = ""


Handler = Callable[[HttpRequest], Response]

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


class HttpRoutes:
    """The GET route table. ``clock`` (ns since the epoch) stamps ``ts_send``;
    ``max_depth`` is the deepest /v1/book (the levels snapshots capture)."""

    def __init__(
        self,
        registry: BookRegistry,
        *,
        clock: Callable[[], int] = time.time_ns,
        max_depth: int = 25,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._max_depth = max_depth
        self._exact: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        self._health_checks: dict[str, HealthCheck] = {}
        self.add("/health", self._health)
        self.add(BBO_PREFIX, self._bbo, prefix=True)
        self.add(BOOK_PREFIX, self._book, prefix=True)

    def add(self, path: str, handler: Handler, *, prefix: bool = False) -> None:
        """Serve ``GET path`` (or every path under ``path`` when ``prefix``) by ``handler``."""
        if prefix:
            self._prefixes.append((path, handler))
        else:
            self._exact[path] = handler

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        """Show ``check``'s details under ``name`` on /health; unhealthy makes the status
        ``degraded``."""
        self._health_checks[name] = check

    def respond(self, target: str) -> Response:
        """The response to ``GET target`` (path and optional query). O(routes) to find the
        route; /health is O(instruments), the others O(1) or O(depth)."""
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        handler = self._exact.get(path)
        if handler is not None:
            return handler(HttpRequest(path, query))
        for prefix, handler in self._prefixes:
            if path.startswith(prefix):
                return handler(HttpRequest(path, query, path.removeprefix(prefix)))
        return error_response(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no route {path!r}")

    def _health(self, request: HttpRequest) -> Response:
        statuses = self._registry.statuses()
        venues: dict[str, Counter[str]] = {}
        for status in statuses:
            venue = venue_of(status.instrument)
            venues.setdefault(venue, Counter())[status.state.value] += 1
        healthy = all(status.state is InstrumentState.LIVE for status in statuses)
        checks: dict[str, object] = {}
        for name, check in self._health_checks.items():
            ok, checks[name] = check()
            healthy = healthy and ok
        body = orjson.dumps(
            {
                "status": "ok" if healthy else "degraded",
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
        return json_response(HTTPStatus.OK, body)

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
