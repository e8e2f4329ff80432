"""``GET /v1/history/bbo/<instrument>?from=T&to=T&limit=N``: stored BBO changes as NDJSON.

``T`` is integer nanoseconds since the epoch or ISO 8601 (``2026-12-03T07:00:00Z``; no
offset means UTC); the window is ``from <= ts_recv < to`` (when marketcast received the
change: always set, and the order rows are stored in), ``from`` defaulting to the
beginning and ``to`` to no end, at most ``limit`` rows. Each line is the same object as
the ``bbo`` wire message (``encode_bbo``), ``ts_send`` being when the line was written,
with its timestamps written as ``?ts=ns|us|ms|iso`` asks (as on the websocket).

The body streams (``StreamedResponse``, chunked): rows come from the backend one page at
a time (``BboHistoryReader``: SQLite's reader thread, a PostgreSQL cursor), each page is
encoded and written and the socket drained before the next is read, so a day of rows
never sits in memory and a slow reader slows only its own read. A storage failure before
the first row is 503 ``storage_unavailable``; after it, the body is cut short (no final
chunk), which HTTP clients report as an incomplete response.

Errors: 400 ``bad_request`` (a bad ``from``/``to``/``limit``/``ts``), 404
``unknown_instrument`` (not an instrument this server carries).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

from websockets.http11 import Response

from book.instruments import split_instrument
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from publish.http import HttpRequest, HttpRoutes, StreamedResponse, error_response
from publish.protocol import ErrorCode, encode_bbo
from publish.storage.backend import BboHistoryReader
from publish.storage.rows import BboRow
from publish.wire import TimeFormat, restamp

HISTORY_PREFIX = "/v1/history/bbo/"
NDJSON = "application/x-ndjson"
END_OF_TIME = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class HistoryRoute:
    """Serves the route from ``backend``; ``clock`` (ns since the epoch) stamps
    ``ts_send``."""

    def __init__(
        self,
        registry: BookRegistry,
        backend: BboHistoryReader,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._registry = registry
        self._backend = backend
        self._clock = clock

    def install(self, routes: HttpRoutes) -> None:
        routes.add(HISTORY_PREFIX, self.respond, prefix=True)

    def respond(self, request: HttpRequest) -> Response | StreamedResponse:
        instrument = request.tail
        if self._registry.status(instrument) is None:
            return error_response(
                HTTPStatus.NOT_FOUND,
                ErrorCode.UNKNOWN_INSTRUMENT,
                f"unknown instrument {instrument[:64]!r}",
            )
        try:
            start = parse_time(_last(request, "from"), default=0)
            end = parse_time(_last(request, "to"), default=END_OF_TIME)
            limit = _limit(_last(request, "limit"))
            time_format = _time_format(_last(request, "ts"))
        except ValueError as exc:
            return error_response(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, str(exc))
        venue, symbol = split_instrument(instrument)
        pages = self._backend.bbo_history(venue, symbol, start_ns=start, end_ns=end, limit=limit)
        lines = self._lines(instrument, pages, time_format)
        return StreamedResponse(HTTPStatus.OK, NDJSON, lines)

    async def _lines(
        self,
        instrument: str,
        pages: AsyncGenerator[list[BboRow], None],
        time_format: TimeFormat,
    ) -> AsyncGenerator[bytes, None]:
        """One chunk of NDJSON lines per page. O(page) per chunk: ~6 µs per row, ~3 µs
        more for a time format other than ``ns``."""
        async with aclosing(pages):  # a client that leaves ends the read (and its cursor)
            async for page in pages:
                ts_send = self._clock()
                yield b"".join(
                    restamp(encode_bbo(_snapshot(instrument, row), ts_send), time_format) + b"\n"
                    for row in page
                )


def parse_time(text: str | None, *, default: int) -> int:
    """Nanoseconds since the epoch of ``text``: an integer (ns) or ISO 8601 (UTC unless
    it says otherwise); ``default`` when absent. ``ValueError`` names what is wrong."""
    if text is None or text == "":
        return default
    if text.isascii() and text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:64]!r} is neither nanoseconds since the epoch nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1_000


def _last(request: HttpRequest, name: str) -> str | None:
    values = request.query.get(name)
    return values[-1] if values else None


def _time_format(text: str | None) -> TimeFormat:
    if text is None:
        return TimeFormat.NS
    try:
        return TimeFormat(text)
    except ValueError:
        known = ", ".join(TimeFormat)
        raise ValueError(f"ts must be one of {known}, got {text[:16]!r}") from None


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise ValueError(f"limit must be a positive integer, got {text[:32]!r}")
    return int(text)


def _snapshot(instrument: str, row: BboRow) -> BookSnapshot:
    """The top-of-book snapshot a stored row was taken from (no depth), for the one
    ``bbo`` encoder."""
    return BookSnapshot(
        instrument=instrument,
        seq=row.seq,
        ts_event=row.ts_event,
        ts_recv=row.ts_recv,
        ts_book=row.ts_recv,
        bid=row.bid_px,
        bid_qty=row.bid_qty,
        ask=row.ask_px,
        ask_qty=row.ask_qty,
    )
