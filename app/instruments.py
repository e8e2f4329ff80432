"""Instruments learned from each venue's own metadata, checked against the config.

At start (and every ``metadata_refresh_seconds``: ``app.refresh``) each venue's
instrument metadata is fetched (``feeds/<venue>/metadata.py`` says which requests and
parses the answers) within the venue's REST weight budget. ``resolve`` then checks the configured
instruments against it: an instrument the venue does not list is a ``ConfigError``
naming it; one that is halted or delisted is kept aside with its reason (it gets the
``halted`` state, never a silent drop); a pattern (``*-USDT``) selects every trading
instrument whose canonical symbol matches, at most ``max_instruments`` of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from app.exceptions import ConfigError
from app.settings import VenueSettings
from app.venues import VenueMetadata, venue_kind
from book.instruments import instrument_id
from book.status import InstrumentState, InstrumentStatus
from feeds.exceptions import MetadataError
from feeds.metadata import InstrumentInfo, MetadataPage, MetadataRequest, TradingStatus
from feeds.ratelimit import WeightLimiter
from feeds.recordings import FrameKind, RecordedFrame
from feeds.symbols import SymbolMap

log = logging.getLogger(__name__)

Recorder = Callable[[RecordedFrame], None]
FETCH_TIMEOUT_SECONDS = 15.0
MAX_PAGES = 100
"""A venue that keeps paging past this is not believed (a loop in its cursors)."""


@dataclass(frozen=True, slots=True)
class ResolvedVenue:
    """A venue's configuration once checked against its metadata.

    ``venue.symbols`` holds the trading instruments to subscribe (patterns expanded);
    ``halted`` the configured ones the venue lists as not trading, canonical -> reason.
    """

    venue: VenueSettings
    halted: dict[str, str] = field(default_factory=dict)
    instruments: tuple[InstrumentInfo, ...] = ()


async def fetch_metadata(
    venue: VenueSettings,
    ws_url: str | None,
    rest_url: str | None,
    *,
    http: httpx.AsyncClient,
    limiter: WeightLimiter | None = None,
    recorder: Recorder | None = None,
) -> tuple[InstrumentInfo, ...]:
    """Every instrument ``venue`` lists. ``MetadataError`` if it cannot be had."""
    metadata = venue_kind(venue.adapter_kind).metadata
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_SECONDS):
            if metadata.ws_frame is not None:
                return await _fetch_over_websocket(venue.id, metadata, ws_url, recorder)
            return await _fetch_over_rest(
                venue.id, metadata, rest_url or metadata.rest_base, http, limiter, recorder
            )
    except (httpx.HTTPError, OSError, TimeoutError, WebSocketException) as exc:
        raise MetadataError(f"{venue.id}: instrument metadata unavailable: {exc!r}") from exc


async def _fetch_over_rest(
    venue: str,
    metadata: VenueMetadata,
    base: str,
    http: httpx.AsyncClient,
    limiter: WeightLimiter | None,
    recorder: Recorder | None,
) -> tuple[InstrumentInfo, ...]:
    instruments: list[InstrumentInfo] = []
    pending: list[MetadataRequest] = list(metadata.requests)
    pages = 0
    while pending:
        request = pending.pop(0)
        pages += 1
        if pages > MAX_PAGES:
            raise MetadataError(f"{venue}: instrument metadata pages past {MAX_PAGES}")
        if limiter is not None:
            await limiter.acquire(request.weight)
        url = urljoin(base.rstrip("/") + "/", request.path.lstrip("/"))
        response = await http.get(url)
        if response.status_code != 200:
            raise MetadataError(f"{venue}: {url} answered HTTP {response.status_code}")
        if recorder is not None:
            recorder(RecordedFrame(time.time_ns(), FrameKind.HTTP, response.text, url, venue))
        page = metadata.parse(response.content)
        if page is None:
            raise MetadataError(f"{venue}: {url} did not answer with instrument metadata")
        instruments += page.instruments
        if page.next is not None:
            pending.append(page.next)
    return tuple(instruments)


async def _fetch_over_websocket(
    venue: str, metadata: VenueMetadata, ws_url: str | None, recorder: Recorder | None
) -> tuple[InstrumentInfo, ...]:
    url = ws_url or metadata.rest_base
    assert metadata.ws_frame is not None
    async with connect(url, max_size=2**24) as ws:
        await ws.send(metadata.ws_frame)
        async for frame in ws:
            page = metadata.parse(frame)
            if page is not None:
                if recorder is not None:
                    text = frame if isinstance(frame, str) else frame.decode()
                    recorder(RecordedFrame(time.time_ns(), FrameKind.HTTP, text, url, venue))
                return page.instruments
    raise MetadataError(f"{venue}: the connection closed before the instrument snapshot")


def rest_budget(venue: VenueSettings) -> WeightLimiter | None:
    """A new limiter of the venue's REST weight per minute (``None``: it has no budget);
    one per venue, shared by its metadata requests and REST snapshots."""
    adapter = venue_kind(venue.adapter_kind).adapter(SymbolMap(venue.id, {}), None, None, None)
    weight = adapter.rest_weight_per_minute
    return WeightLimiter(weight) if weight else None


async def learn_instruments(
    venue: VenueSettings,
    endpoints: tuple[str | None, str | None],
    *,
    recorder: Recorder | None = None,
    limiter: WeightLimiter | None = None,
) -> ResolvedVenue:
    """``venue`` checked against the metadata it serves at ``endpoints`` (ws, REST),
    fetched within ``limiter`` (default: a budget of its own, ``rest_budget``).

    When the metadata cannot be had (the venue's REST is down), the explicitly
    configured instruments go on unchecked (logged); patterns cannot, so they are a
    ``ConfigError`` then.
    """
    if limiter is None:
        limiter = rest_budget(venue)
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as http:
            instruments = await fetch_metadata(
                venue, *endpoints, http=http, limiter=limiter, recorder=recorder
            )
    except MetadataError as exc:
        if venue.patterns:
            raise ConfigError(f"venue {venue.id!r}: cannot expand patterns: {exc}") from exc
        log.warning("%s; its configured instruments are not checked", exc)
        return ResolvedVenue(venue)
    resolved = resolve(venue, instruments)
    log.info(
        "%s: %d instruments listed, %d selected, %d halted",
        venue.id,
        len(instruments),
        len(resolved.venue.symbols),
        len(resolved.halted),
    )
    return resolved


class StatusSink(Protocol):
    """The part of a ``book.sink.FeedSink`` that declares instruments and their states."""

    def add_instrument(self, instrument: str, ts: int) -> None: ...

    def set_status(self, status: InstrumentStatus) -> None: ...


def declare_halted(sink: StatusSink, resolved: ResolvedVenue, ts: int) -> None:
    """Give each halted configured instrument the ``halted`` state and its reason."""
    for canonical, reason in resolved.halted.items():
        instrument = instrument_id(resolved.venue.id, canonical)
        sink.add_instrument(instrument, ts)
        sink.set_status(InstrumentStatus(instrument, InstrumentState.HALTED, reason, ts))


def resolve(venue: VenueSettings, instruments: Sequence[InstrumentInfo]) -> ResolvedVenue:
    """Check ``venue``'s configured instruments and expand its patterns (module doc).

    ``ConfigError`` names an instrument the venue does not list, a pattern that selects
    nothing, or a selection larger than ``max_instruments``.
    """
    by_symbol = {info.symbol: info for info in instruments}
    symbols: dict[str, str] = {}
    halted: dict[str, str] = {}
    for canonical, native in venue.symbols.items():
        info = by_symbol.get(native)
        if info is None:
            raise ConfigError(
                f"venue {venue.id!r}: {venue.id}:{canonical} is not an instrument it lists "
                f"(no {native!r} in its instrument metadata)"
            )
        reason = halted_reason(info)
        if reason is None:
            symbols[canonical] = native
        else:
            halted[canonical] = reason
    for pattern in venue.patterns:
        matches = {
            info.canonical: info.symbol
            for info in instruments
            if info.status is TradingStatus.TRADING and fnmatchcase(info.canonical, pattern)
        }
        if not matches:
            raise ConfigError(f"venue {venue.id!r}: pattern {pattern!r} selects no instrument")
        symbols |= {canonical: native for canonical, native in matches.items()}
    if len(symbols) > venue.max_instruments:
        raise ConfigError(
            f"venue {venue.id!r}: {len(symbols)} instruments selected, more than "
            f"max_instruments = {venue.max_instruments} (narrow the patterns or raise it)"
        )
    return ResolvedVenue(replace(venue, symbols=symbols, patterns=()), halted, tuple(instruments))


def halted_reason(info: InstrumentInfo) -> str | None:
    """Why the venue does not trade ``info`` (``halted: the venue says BREAK``); ``None``
    while it trades."""
    if info.status is TradingStatus.TRADING:
        return None
    return f"{info.status}: the venue says {info.venue_status}"


def recorded_metadata(venue: str, frame: RecordedFrame) -> MetadataPage | None:
    """The instruments of a metadata response recorded by ``marketcast record`` (an
    ``http`` frame of one of the venue's metadata requests, or Kraken's instrument
    snapshot); ``None`` for any other frame, and for one that does not parse (logged:
    replay then names the venue's symbols by their spelling)."""
    if frame.kind is not FrameKind.HTTP:
        return None
    metadata = venue_kind(venue).metadata
    if metadata.ws_frame is None:
        paths = {urlsplit(request.path).path for request in metadata.requests}
        if urlsplit(frame.url).path not in paths:
            return None
    try:
        return metadata.parse(frame.data)
    except MetadataError as exc:
        log.warning("recorded metadata of %s not used: %s", venue, exc)
        return None
