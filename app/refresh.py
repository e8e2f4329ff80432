"""Instrument metadata refreshed while the server runs (``metadata_refresh_seconds``).

Every venue's metadata is fetched again on its interval (one metadata request set per
venue and refresh, through the venue's shared REST weight budget; the first refresh of
each venue at a random point of its first interval and every later one jittered, so
venues do not fire together). ``plan_refresh`` compares it with what the server
carries, and the ``MetadataRefresher`` applies the difference:

============================================  ======================================
what the venue's metadata says now            what happens
============================================  ======================================
a carried instrument does not trade, or is    ``halted`` with the reason (its runner
not listed any more                           puts its book aside; never dropped)
a halted instrument trades again              carried: its book is synced afresh;
                                              halted at start (never subscribed): as
                                              a new instrument
a new trading instrument matches a pattern    a new connection carries it (running
                                              connections never change their
                                              subscriptions), within
                                              ``max_instruments``; the rest are
                                              logged and counted, not carried
a tick or lot size changed                    logged and counted; the metadata kept
                                              is the new one
the refresh failed (HTTP error, timeout,      logged and counted; the previous
bad answer)                                   metadata stays, next interval retries
============================================  ======================================

Counters are a ``FeedCounters`` of the venue, so ``/metrics`` shows them with the other
feed counters (``marketcast_feed_metadata_refreshes{venue=..}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

import httpx

from app.instruments import (
    FETCH_TIMEOUT_SECONDS,
    ResolvedVenue,
    StatusSink,
    fetch_metadata,
    halted_reason,
)
from app.settings import VenueSettings
from book.counters import FeedCounters
from book.instruments import instrument_id
from book.status import InstrumentState, InstrumentStatus
from feeds.exceptions import MetadataError
from feeds.metadata import InstrumentInfo, TradingStatus
from feeds.ratelimit import WeightLimiter
from feeds.runner import FeedRunner

log = logging.getLogger(__name__)

DELISTED = "delisted: the venue no longer lists it"
JITTER = 0.1
"""Each interval is the setting +- this fraction, at random."""
TRADING_AGAIN = "trading again: the venue's metadata says so"

StartRunners = Callable[[VenueSettings], Sequence[FeedRunner]]
"""Builds and starts the runners of a venue whose ``symbols`` are instruments to add."""


@dataclass(frozen=True, slots=True)
class RefreshPlan:
    """What one refresh changes (canonical symbols of one venue)."""

    halt: Mapping[str, str]
    """Carried instruments the venue no longer trades -> why (a new reason included)."""
    resume: tuple[str, ...]
    """Carried halted instruments trading again."""
    add: Mapping[str, str]
    """Trading instruments to start carrying -> their venue symbols."""
    declare: Mapping[str, str]
    """Configured instruments not carried whose halted reason changed -> the reason."""
    not_added: tuple[str, ...]
    """Trading matches left out by ``max_instruments``."""
    resized: tuple[tuple[InstrumentInfo, InstrumentInfo], ...]
    """Carried instruments whose tick or lot size changed: (before, now)."""


def plan_refresh(
    configured: VenueSettings,
    carried: Mapping[str, str],
    halted: Mapping[str, str],
    previous: Sequence[InstrumentInfo],
    instruments: Sequence[InstrumentInfo],
) -> RefreshPlan:
    """The difference between what the server carries and what the venue lists now.

    ``configured`` is the venue as configured (explicit ``symbols`` and ``patterns``);
    ``carried`` its instruments on connections (canonical -> venue symbol); ``halted``
    those in the ``halted`` state now (carried or not) -> reason; ``previous`` the last
    metadata. Additions are taken in canonical order until ``max_instruments``.
    """
    by_symbol = {info.symbol: info for info in instruments}
    before = {info.symbol: info for info in previous}
    halt: dict[str, str] = {}
    resume: list[str] = []
    resized: list[tuple[InstrumentInfo, InstrumentInfo]] = []
    for canonical, native in carried.items():
        info = by_symbol.get(native)
        reason = DELISTED if info is None else halted_reason(info)
        if reason is not None and halted.get(canonical) != reason:
            halt[canonical] = reason
        elif reason is None and canonical in halted:
            resume.append(canonical)
        old = before.get(native)
        if info is not None and old is not None and (old.tick, old.lot) != (info.tick, info.lot):
            resized.append((old, info))
    wanted: dict[str, str] = {}
    declare: dict[str, str] = {}
    for canonical, native in configured.symbols.items():
        if canonical in carried:
            continue
        info = by_symbol.get(native)
        reason = DELISTED if info is None else halted_reason(info)
        if reason is None:
            wanted[canonical] = native
        elif halted.get(canonical) != reason:
            declare[canonical] = reason
    for info in instruments:
        if (
            info.status is TradingStatus.TRADING
            and info.canonical not in carried
            and any(fnmatchcase(info.canonical, pattern) for pattern in configured.patterns)
        ):
            wanted[info.canonical] = info.symbol
    room = max(0, configured.max_instruments - len(carried))
    ordered = sorted(wanted)
    return RefreshPlan(
        halt=halt,
        resume=tuple(resume),
        add={canonical: wanted[canonical] for canonical in ordered[:room]},
        declare=declare,
        not_added=tuple(ordered[room:]),
        resized=tuple(resized),
    )


@dataclass(slots=True)
class RefreshCounters(FeedCounters):
    """A venue's feed counters, with those of its metadata refreshes."""

    metadata_refreshes: int = 0
    """Refreshes whose metadata was had and applied."""
    metadata_refresh_failures: int = 0
    """Refreshes that failed (HTTP error, timeout, bad answer): nothing changed."""
    instruments_halted: int = 0
    instruments_resumed: int = 0
    instruments_added: int = 0
    instruments_not_added: int = 0
    """New matches left out by ``max_instruments`` (counted at each refresh)."""
    instruments_resized: int = 0
    """Tick or lot size changes seen."""


class MetadataRefresher:
    """Keeps one venue's carried instruments in step with its metadata (module doc).

    ``runners`` are the venue's (more are added through ``start_runners``); ``sink``
    receives the states of configured instruments no runner carries.
    """

    def __init__(
        self,
        configured: VenueSettings,
        resolved: ResolvedVenue,
        endpoints: tuple[str | None, str | None],
        *,
        runners: Sequence[FeedRunner],
        sink: StatusSink,
        start_runners: StartRunners,
        limiter: WeightLimiter | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.venue = configured.id
        self.configured = configured
        self.endpoints = endpoints
        self.interval = configured.metadata_refresh_seconds
        self.instruments: tuple[InstrumentInfo, ...] = resolved.instruments
        """The venue's metadata as last fetched."""
        self.carried: dict[str, str] = dict(resolved.venue.symbols)
        self.halted: dict[str, str] = dict(resolved.halted)
        self.runners = list(runners)
        self.counters = RefreshCounters()
        self.connections = 0  # a ``FeedSource`` of metrics: its runners count connections
        self._sink = sink
        self._start_runners = start_runners
        self._limiter = limiter
        self._http = http
        self._clock = clock
        self._rng = rng or random.Random()

    async def run(self) -> None:
        """Refresh every interval (jittered; the first at a random point of the first
        interval) until cancelled. Never raises but for cancellation."""
        if self.interval <= 0:
            return
        delay = self.interval * self._rng.uniform(0.5, 1.0)
        async with self._client() as http:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.refresh(http)
                except Exception:  # task boundary: one bad refresh must not end the next ones
                    self.counters.metadata_refresh_failures += 1
                    log.exception("%s: metadata refresh failed", self.venue)
                delay = self.interval * self._rng.uniform(1 - JITTER, 1 + JITTER)

    def _client(self) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        """The injected client (left open), or an own one for the refresher's life."""
        if self._http is not None:
            return contextlib.nullcontext(self._http)
        return httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS)

    async def refresh(self, http: httpx.AsyncClient) -> bool:
        """Fetch the metadata once and apply it; False (logged, counted, nothing changed)
        if it could not be had."""
        try:
            instruments = await fetch_metadata(
                self.configured, *self.endpoints, http=http, limiter=self._limiter
            )
        except MetadataError as exc:
            self.counters.metadata_refresh_failures += 1
            log.warning("%s: metadata refresh failed, previous metadata kept: %s", self.venue, exc)
            return False
        plan = plan_refresh(
            self.configured, self.carried, self.halted, self.instruments, instruments
        )
        self.apply(plan)
        self.instruments = tuple(instruments)
        self.counters.metadata_refreshes += 1
        return True

    def apply(self, plan: RefreshPlan) -> None:
        """Carry out one refresh's ``plan``."""
        counters, ts = self.counters, self._clock()
        for canonical, reason in plan.halt.items():
            instrument = instrument_id(self.venue, canonical)
            log.warning("%s: %s halted (%s)", self.venue, instrument, reason)
            for runner in self.runners:
                runner.halt(instrument, reason)
            self.halted[canonical] = reason
            counters.instruments_halted += 1
        for canonical in plan.resume:
            instrument = instrument_id(self.venue, canonical)
            log.info("%s: %s trades again; resyncing it", self.venue, instrument)
            for runner in self.runners:
                runner.resume(instrument, TRADING_AGAIN)
            del self.halted[canonical]
            counters.instruments_resumed += 1
        for canonical, reason in plan.declare.items():
            instrument = instrument_id(self.venue, canonical)
            self._sink.set_status(InstrumentStatus(instrument, InstrumentState.HALTED, reason, ts))
            self.halted[canonical] = reason
        if plan.add:
            self._add(plan.add, ts)
        if plan.not_added:
            counters.instruments_not_added += len(plan.not_added)
            log.warning(
                "%s: %d new matching instruments not carried: max_instruments = %d reached (%s)",
                self.venue,
                len(plan.not_added),
                self.configured.max_instruments,
                ", ".join(plan.not_added[:10]),
            )
        for old, new in plan.resized:
            counters.instruments_resized += 1
            log.info(
                "%s: %s tick %s -> %s, lot %s -> %s",
                self.venue,
                new.canonical,
                old.tick,
                new.tick,
                old.lot,
                new.lot,
            )

    def _add(self, symbols: Mapping[str, str], ts: int) -> None:
        log.info(
            "%s: %d instruments to carry on new connections: %s",
            self.venue,
            len(symbols),
            ", ".join(symbols),
        )
        venue = replace(self.configured, symbols=dict(symbols), patterns=())
        self.runners += self._start_runners(venue)
        for canonical in symbols:
            if self.halted.pop(canonical, None) is not None:  # halted at start: trades now
                instrument = instrument_id(self.venue, canonical)
                status = InstrumentStatus(instrument, InstrumentState.SYNCING, TRADING_AGAIN, ts)
                self._sink.set_status(status)
                self.counters.instruments_resumed += 1
            else:
                self.counters.instruments_added += 1
        self.carried |= symbols
