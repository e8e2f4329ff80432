"""The ingest side of the bus: a ``FeedSink`` that tees into the local one and onto NATS.

The feeds' calls stay O(1) and never wait for NATS: ``publish`` and ``set_status``
hand the value to the local sink (the registry), keep it as the instrument's pending
value (latest wins: conflation, so the buffer is bounded by the number of instruments)
and wake the publisher task. That task encodes each pending value once and publishes
it: books first, then states (the order the feeds use: a new book, then ``live``).
It flushes on the event-loop iteration after the changes while its flush budget
(``FlushBudget``) allows: up to ``FLUSH_BURST`` flushes back to back, refilled at one
per ``FLUSH_INTERVAL``. Feeds whose loop turns with changes come less often than that
on average (under 1,000 a second) see every change go out at once; a busy feed, one frame per
loop turn, exhausts the budget, and then the task sleeps until a flush is earned again
(one timer at a time) while everything that arrives meanwhile conflates into that
flush: a burst costs one flush (and one task step) per interval rather than one per
frame. While NATS is down or slow the pending values keep being
replaced; a publish that fails is counted as dropped and the edges repair it from a
state request (the instrument's ``bus_seq`` shows the gap).

The task also sends a heartbeat 4 times a second (and at once when an edge says
hello), a ``BYE`` when it stops, and answers state requests from edges with the latest
book and state of the instruments asked for.

Cost on the feed's path: one dict store, one integer add and a flag test per call,
about 1,100 CPython 3.11 instructions above the local sink's own (callgrind; the
``Event.set`` only on the first call after a flush). In the task, per flush (one per
``FLUSH_INTERVAL`` on average while the feed is busy): one task step, one encode and one
nats-py publish per instrument that changed, and one socket write by nats-py's
flusher: about 100,000 instructions with one instrument, nearly all of them nats-py's
publish and flusher. Per frame that is the larger part while a feed is busy: one frame
per loop turn flushes every 10-100 frames.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from book.incidents import FeedIncident
from book.sink import FeedSink
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from bus.codec import (
    StateRequest,
    decode,
    encode_book,
    encode_bye,
    encode_heartbeat,
    encode_state,
    encode_status,
)
from bus.exceptions import DecodeError
from bus.link import BusLink, raise_swallowed_cancellation
from bus.subjects import Subjects

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 0.25
"""Seconds between heartbeats: bounds how late an edge learns it lost a message's tail
or that its ingest is silent."""

FLUSH_INTERVAL = 0.001
"""Seconds per flush that carries books or states, on average while the feeds are busy:
the budget earns one flush per interval. A feed handing over a frame per loop turn (tens
of microseconds each) then costs one flush per millisecond instead of one per frame,
which keeps the ingest's full path with the bus at its 85% floor (bench scenario 7b).
Not shorter: uvloop runs a wait of less than half a millisecond on the next iteration,
which coalesces nothing. A constant, not a setting: ``[bus]`` names no such key."""

FLUSH_BURST = 4
"""Flushes that may go out back to back after a quiet spell before the budget makes the
task wait. At 1,000 BBO changes/s (the bus hop's target: at most +0.5 ms p50, +2 ms p99
over the single process) changes come about a millisecond apart, the budget refills as
fast as they spend it, and each goes out on the next loop iteration; a change that
closely follows another draws on the burst instead of waiting for the rest of an
interval (under uvloop, whose timers count whole milliseconds, a full millisecond)."""


class FlushBudget:
    """A token bucket of flushes: ``burst`` at most, earned at one per ``interval``
    seconds. ``spend(now)`` takes one and says how long to wait before the next flush:
    0 while a whole flush is left, else until one is earned. So ``burst`` flushes go out
    back to back after a quiet spell, and on average flushes never outrun one per
    ``interval`` (a wait that a timer cut short leaves less credit, and the next wait is
    longer)."""

    __slots__ = ("burst", "interval", "_credit", "_at")

    def __init__(self, interval: float, burst: int, now: float) -> None:
        if interval < 0 or burst < 1:
            raise ValueError("a flush budget needs interval >= 0 and burst >= 1")
        self.interval = interval
        self.burst = burst
        self._credit = float(burst)
        self._at = now

    def spend(self, now: float) -> float:
        """Take one flush at ``now`` (monotonic seconds); the seconds to wait before the
        next one."""
        if self.interval == 0:
            return 0.0
        earned = (now - self._at) / self.interval
        self._credit = min(float(self.burst), self._credit + earned) - 1.0
        self._at = now
        return (1.0 - self._credit) * self.interval if self._credit < 1.0 else 0.0


@dataclass(slots=True)
class PublisherCounters:
    offered: int = 0
    """Snapshots and states the feeds handed over."""
    published: int = 0
    """Messages handed to NATS (after conflation)."""
    dropped: int = 0
    """Messages NATS refused (down past its buffer, closed): edges repair them."""
    heartbeats: int = 0
    state_requests: int = 0
    bad_requests: int = 0
    last_publish_ns: int = 0
    """Wall clock of the last message handed to NATS (0: none yet)."""


class BusPublisher:
    """The ingest's ``FeedSink``: ``local`` first, then the bus. Run ``run()`` in the
    node's task group."""

    def __init__(
        self,
        local: FeedSink,
        link: BusLink,
        subjects: Subjects,
        *,
        source: int | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        flush_interval: float = FLUSH_INTERVAL,
        flush_burst: int = FLUSH_BURST,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.local = local
        self.link = link
        self.subjects = subjects
        self.source = source if source is not None else secrets.randbits(63)
        """This process's id on the bus: new at every start."""
        self.heartbeat_interval = heartbeat_interval
        self.flush_interval = flush_interval
        self.flush_burst = flush_burst
        self.clock = clock
        self.counters = PublisherCounters()
        self._books: dict[str, BookSnapshot] = {}
        """Each instrument's book as of the last flush (a pending one is newer)."""
        self._statuses: dict[str, InstrumentStatus] = {}
        self._pending_books: dict[str, BookSnapshot] = {}
        self._pending_statuses: dict[str, InstrumentStatus] = {}
        self._bus_seq: dict[str, int] = {}
        self._heartbeat_due = True
        self._flushing = False
        self._wake = asyncio.Event()
        self._woken = False
        """``publish`` set ``_wake`` since the task last cleared it: the feeds' path
        tests this flag rather than calling ``Event.is_set``."""
        link.on_connect(self._subscribe)
        link.on_close(self._say_bye)

    # -- FeedSink ---------------------------------------------------------------------

    def add_instrument(self, instrument: str, ts: int) -> None:
        self.local.add_instrument(instrument, ts)
        if instrument not in self._bus_seq:
            self._bus_seq[instrument] = 0
            self._statuses.setdefault(
                instrument, InstrumentStatus(instrument, InstrumentState.SYNCING, "starting", ts)
            )
            self._heartbeat_due = True
            self._wake.set()

    def publish(self, snapshot: BookSnapshot) -> None:
        """O(1): the local sink's publish, one dict store, one integer add, a flag test
        (the wake-up: once per flush). About 1,100 CPython instructions above the local
        sink's own (callgrind)."""
        self.local.publish(snapshot)
        self._pending_books[snapshot.instrument] = snapshot
        self.counters.offered += 1
        if not self._woken:
            self._woken = True
            self._wake.set()

    def set_status(self, status: InstrumentStatus) -> None:
        self.local.set_status(status)
        if status.instrument not in self._bus_seq:
            self._bus_seq[status.instrument] = 0
            self._heartbeat_due = True
        self._statuses[status.instrument] = status
        self._pending_statuses[status.instrument] = status
        self.counters.offered += 1
        self._wake.set()

    def incident(self, incident: FeedIncident) -> None:
        self.local.incident(incident)

    @property
    def idle(self) -> bool:
        """Nothing pending and no publish tick in progress: everything the feeds handed
        over is with nats-py (sent, or buffered in its client)."""
        return not (self._flushing or self._pending_books or self._pending_statuses)

    # -- the task -----------------------------------------------------------------------

    async def run(self) -> None:
        """Publish pending values and heartbeats until cancelled (the link says ``BYE``
        before it closes)."""
        budget = FlushBudget(self.flush_interval, self.flush_burst, time.monotonic())
        async with asyncio.TaskGroup() as group:
            group.create_task(self._heartbeats(), name="bus:heartbeats")
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._woken = False
                client = await self.link.wait_connected()
                self._flushing = True
                try:
                    carried_values = await self._flush(client)
                finally:
                    self._flushing = False
                raise_swallowed_cancellation()
                if carried_values:
                    # Out of budget: what arrives meanwhile conflates and goes out when
                    # this ends, so a busy feed costs one task step per interval.
                    wait = budget.spend(time.monotonic())
                    if wait > 0:
                        await asyncio.sleep(wait)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self._heartbeat_due = True
            self._wake.set()

    async def _flush(self, client: Client) -> bool:
        """Publish the pending values (and a heartbeat when due); whether there were
        values."""
        books, self._pending_books = self._pending_books, {}
        statuses, self._pending_statuses = self._pending_statuses, {}
        if books or statuses:
            self._books.update(books)
        source = self.source
        bus_seq = self._bus_seq
        for instrument, snapshot in books.items():
            seq = bus_seq[instrument] = bus_seq.get(instrument, 0) + 1
            await self._send(
                client,
                self.subjects.book(instrument),
                encode_book(snapshot, source=source, bus_seq=seq),
            )
        for instrument, status in statuses.items():
            seq = bus_seq[instrument] = bus_seq.get(instrument, 0) + 1
            await self._send(
                client,
                self.subjects.status(instrument),
                encode_status(status, source=source, bus_seq=seq),
            )
        if books or statuses:
            self.counters.last_publish_ns = self.clock()
        if self._heartbeat_due:
            self._heartbeat_due = False
            self.counters.heartbeats += 1
            await self._send(
                client,
                self.subjects.heartbeat,
                encode_heartbeat(source, self.clock(), dict(bus_seq)),
                count=False,
            )
        return bool(books or statuses)

    async def _send(
        self, client: Client, subject: str, payload: bytes, *, count: bool = True
    ) -> None:
        try:
            await client.publish(subject, payload)
        except (nats.errors.Error, OSError) as exc:
            self.counters.dropped += 1
            if self.counters.dropped == 1 or self.counters.dropped % 10_000 == 0:
                log.warning(
                    "bus publish failed (%s); %d dropped so far", exc, self.counters.dropped
                )
            return
        if count:
            self.counters.published += 1

    async def _say_bye(self, client: Client) -> None:
        try:
            async with asyncio.timeout(1.0):
                await client.publish(self.subjects.heartbeat, encode_bye(self.source))
                await client.flush()
        except (TimeoutError, nats.errors.Error, OSError):
            log.info("could not say bye on the bus")

    # -- requests from edges --------------------------------------------------------------

    async def _subscribe(self, client: Client) -> None:
        await client.subscribe(self.subjects.hello, cb=self._on_hello)
        await client.subscribe(self.subjects.state(self.source), cb=self._on_state_request)
        self._heartbeat_due = True
        self._wake.set()

    async def _on_hello(self, msg: Msg) -> None:
        self._heartbeat_due = True
        self._wake.set()

    async def _on_state_request(self, msg: Msg) -> None:
        self.counters.state_requests += 1
        try:
            request = decode(msg.data)
            if not isinstance(request, StateRequest):
                raise DecodeError(f"expected a state request, got {type(request).__name__}")
        except DecodeError as exc:
            self.counters.bad_requests += 1
            log.warning("bad state request on the bus: %s", exc)
            return
        if not msg.reply:
            return
        await msg.respond(self.state_reply(request.instruments))

    def state_reply(self, instruments: tuple[str, ...] = ()) -> bytes:
        """The latest book and state of ``instruments`` (all when empty), each with the
        instrument's current ``bus_seq``. O(instruments asked for)."""
        names = instruments or tuple(self._bus_seq)
        messages: list[bytes] = []
        for name in names:
            if name not in self._bus_seq:
                continue
            seq = self._bus_seq[name]
            snapshot = self._pending_books.get(name, self._books.get(name))
            if snapshot is not None:
                messages.append(encode_book(snapshot, source=self.source, bus_seq=seq))
            status = self._statuses.get(name)
            if status is not None:
                messages.append(encode_status(status, source=self.source, bus_seq=seq))
        return encode_state(self.source, messages)
