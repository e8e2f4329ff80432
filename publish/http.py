"""HTTP GET routes served on the websocket port (through websockets' ``process_request``).

``/health``                 every instrument's state and per-venue counts of states
``/v1/bbo/<instrument>``    the instrument's ``bbo`` message (the same object as on /ws)

Errors are JSON ``{"type":"error","code":...,"message":...}`` with the stable codes of
``publish.protocol.ErrorCode``. Every route reads immutable registry values only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from book.registry import BookRegistry
from book.status import InstrumentState
from publish.protocol import ErrorCode, encode_bbo, encode_error

BBO_PREFIX = "/v1/bbo/"


def json_response(status: HTTPStatus, body: bytes) -> Response:
    """A complete HTTP response carrying ``body`` (already JSON-encoded)."""
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def error_response(status: HTTPStatus, code: ErrorCode, message: str) -> Response:
    return json_response(status, encode_error(code, message))


class HttpRoutes:
    """The GET routes. ``clock`` (ns since the epoch) stamps ``ts_send`` of /v1/bbo."""

    def __init__(self, registry: BookRegistry, *, clock: Callable[[], int] = time.time_ns) -> None:
        self._registry = registry
        self._clock = clock

    def respond(self, target: str) -> Response:
        """The response to ``GET target`` (path and optional query). O(instruments) for
        /health, O(1) otherwise."""
        path = unquote(urlsplit(target).path)
        if path == "/health":
            return json_response(HTTPStatus.OK, self._health())
        if path.startswith(BBO_PREFIX):
            return self._bbo(path.removeprefix(BBO_PREFIX))
        return error_response(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no route {path!r}")

    def _health(self) -> bytes:
        statuses = self._registry.statuses()
        venues: dict[str, Counter[str]] = {}
        for status in statuses:
            venue = status.instrument.partition(":")[0]
            venues.setdefault(venue, Counter())[status.state.value] += 1
        healthy = all(status.state is InstrumentState.LIVE for status in statuses)
        return orjson.dumps(
            {
                "status": "ok" if healthy else "degraded",
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

    def _bbo(self, instrument: str) -> Response:
        status = self._registry.status(instrument)
        if status is None:
            return error_response(
                HTTPStatus.NOT_FOUND,
                ErrorCode.UNKNOWN_INSTRUMENT,
                f"unknown instrument {instrument!r}",
            )
        snapshot = self._registry.live_snapshot(instrument)
        if snapshot is None:
            return error_response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                ErrorCode.NOT_LIVE,
                f"{instrument} is {status.state.value} ({status.reason})",
            )
        return json_response(HTTPStatus.OK, encode_bbo(snapshot, self._clock()))
