"""The servers a fan-out run measures, fed the same synthetic BBO changes at a set rate,
each in a fresh process of its own (``ServerProcess``, see ``bench.agent``).

- ``MarketcastServer``: the real thing, ``publish.server.MarketServer`` + ``Fanout`` over
  a ``BookRegistry`` (no feeds): the bench publishes snapshots into the registry, as a
  feed would, and subscribers subscribe to the ``bbo`` channel of every instrument.
- ``RawBroadcastServer``: the floor, a bare ``websockets`` server with every connection
  in one set; each change is encoded once (``publish.protocol.encode_bbo``, the same
  bytes marketcast sends) and handed to ``websockets.broadcast`` at once: no
  subscriptions, no per-client queues, no conflation, no backpressure. With batching,
  the changes of one publish go out as one array frame (``encode_batch``).

``Publisher`` publishes ``rate`` changes per second in bursts every ``PERIOD`` seconds,
round-robin over the instruments, each a new best bid so that every change is a BBO
change. ``ts_event``/``ts_recv`` of a change are the moment it is published, so a
subscriber's ``arrival - ts_recv`` is the publish-to-receive latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection
from typing import Protocol

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve

from bench.agent import Command, HelperProcess, serve_commands
from bench.holdings import Spread, holding
from bench.report import rss_bytes
from book.fixed import SCALE
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from publish.auth import AuthPolicy, TokenAuthority
from publish.client import ServerLimits
from publish.counters import Counters
from publish.fanout import Fanout
from publish.position import Position, PositionSide
from publish.profit import ProfitEngine
from publish.protocol import encode_batch, encode_bbo
from publish.server import MarketServer

PERIOD = 0.001
"""Seconds between bursts of the publisher (the loop's timer resolution)."""


def change_spacing_ns(rate: float) -> int:
    """Nanoseconds between two due times of a publisher at ``rate`` changes/s; each
    instrument changes every ``instruments x`` this (round-robin)."""
    return int(1e9 / rate)


def instrument_names(count: int) -> list[str]:
    return [f"bench:SYM{i:04d}-USD" for i in range(count)]


class BboSource:
    """Synthetic BBO changes, round-robin over the instruments. O(1) per change.

    A change's ``seq`` is its stamp in ns (when it was published or due, see
    ``Publisher``; kept growing: ``seq`` only has to grow), so a ``profit`` frame, which
    carries the ``seq`` of the book it was marked at, tells a subscriber when the change
    it reflects happened.
    """

    def __init__(self, instruments: list[str]) -> None:
        self._instruments = instruments
        self._seq = [0] * len(instruments)
        self._steps = [0] * len(instruments)
        """Each instrument's bid walks up a cent per change (of 1,000 distinct)."""
        self._next = 0

    def changes(self, count: int, now: int, spacing: int = 0) -> list[BookSnapshot]:
        """``count`` changes; change k is stamped ``now + k * spacing`` (ns)."""
        out = []
        instruments, seqs, steps = self._instruments, self._seq, self._steps
        for k in range(count):
            at = now + k * spacing
            i = self._next
            self._next = (i + 1) % len(instruments)
            seq = seqs[i] = max(seqs[i] + 1, at)
            step = steps[i] = (steps[i] + 1) % 1000
            bid = (10_000 + step) * SCALE // 100
            out.append(
                BookSnapshot(
                    instruments[i], seq, at, at, at, bid, SCALE, bid + SCALE // 100, 2 * SCALE
                )
            )
        return out


class BenchServer(Protocol):
    name: str

    @property
    def url(self) -> str: ...

    def subscribe_frame(self, instruments: list[str] | None = None) -> bytes | None:
        """What a subscriber sends once connected to follow ``instruments`` (default:
        all); ``None`` when the server sends everything to everyone."""
        ...

    def publish(self, changes: list[BookSnapshot]) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class MarketcastServer:
    """With ``accounts``, also the profit engine, token auth, and positions spread over
    the accounts and instruments (``set_positions``), fed straight to the engine as the
    position book would once their opens commit."""

    name = "marketcast"

    def __init__(
        self, instruments: list[str], *, batched: bool, max_connections: int, accounts: int = 0
    ) -> None:
        self._instruments = instruments
        self._batched = batched
        self._accounts = [f"acct-{i:05d}" for i in range(accounts)]
        self._positions: list[Position] = []
        self.registry = BookRegistry()
        for name in instruments:
            self.registry.add_instrument(name)
            self.registry.set_status(InstrumentStatus(name, InstrumentState.LIVE, "bench", 0))
        self.fanout = Fanout(self.registry)
        self._tokens = TokenAuthority(os.urandom(32))
        self.profit = ProfitEngine(self.registry, self.fanout) if accounts else None
        self._server = MarketServer(
            self.registry,
            self.fanout,
            port=0,
            limits=ServerLimits(max_connections=max_connections),
            auth=AuthPolicy(tokens=self._tokens) if accounts else None,
        )

    def set_positions(self, total: int) -> int:
        """Open or close positions until ``total`` are open, spread over the accounts and
        instruments as ``bench.holdings.holding`` places them; the newest are closed
        first."""
        engine = self.profit
        assert engine is not None, "a server without accounts has no positions"
        accounts, instruments, rows = self._accounts, self._instruments, self._positions
        while len(rows) > total:
            engine.position_closed(rows.pop().closed_at(time.time_ns()))
        for i in range(len(rows), total):
            place = holding(i, accounts=len(accounts), instruments=len(instruments))
            row = Position(
                id=f"p{i}",
                account=accounts[place.account],
                instrument=instruments[place.instrument],
                side=PositionSide.BUY if place.long else PositionSide.SELL,
                qty=(1 + i % 7) * SCALE // 10,
                entry_price=(10_000 + i % 1000) * SCALE // 100,
                opened_ts=time.time_ns(),
            )
            rows.append(row)
            engine.position_opened(row)
        return engine.positions

    def spread(self) -> Spread:
        """How the open positions are spread. O(positions)."""
        return Spread.of((row.account, row.instrument) for row in self._positions)

    def profit_requests(self) -> list[tuple[bytes, ...]]:
        """Per account: authenticate as it, then subscribe to its profit channel."""
        return [
            (
                orjson.dumps({"op": "auth", "id": 1, "token": self._tokens.issue(name, ttl=86400)}),
                orjson.dumps({"op": "subscribe", "id": 2, "channel": "profit", "account": name}),
            )
            for name in self._accounts
        ]

    @property
    def url(self) -> str:
        return self._server.url + ("?batch=1" if self._batched else "")

    def subscribe_frame(self, instruments: list[str] | None = None) -> bytes:
        names = self._instruments if instruments is None else instruments
        return orjson.dumps({"op": "subscribe", "id": 1, "channel": "bbo", "instruments": names})

    def publish(self, changes: list[BookSnapshot]) -> None:
        publish = self.registry.publish
        for snapshot in changes:
            publish(snapshot)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()


class RawBroadcastServer:
    name = "raw websockets broadcast"

    def __init__(self, *, batched: bool, deflate: bool = False) -> None:
        self._batched = batched
        self._compression = "deflate" if deflate else None
        """``deflate``: websockets' own per-connection compression (``bench.compression``)."""
        self._connections: set[ServerConnection] = set()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    def subscribe_frame(self, instruments: list[str] | None = None) -> None:
        return None

    def publish(self, changes: list[BookSnapshot]) -> None:
        ts_send = time.time_ns()
        messages = [encode_bbo(snapshot, ts_send) for snapshot in changes]
        connections = self._connections
        if self._batched:
            broadcast(connections, encode_batch(messages), text=True)
        else:
            for message in messages:
                broadcast(connections, message, text=True)

    async def _hold(self, connection: ServerConnection) -> None:
        self._connections.add(connection)
        try:
            await connection.wait_closed()
        finally:
            self._connections.discard(connection)

    async def start(self) -> None:
        limits = ServerLimits()
        self._server = await serve(
            self._hold,
            "127.0.0.1",
            0,
            compression=self._compression,
            max_size=limits.max_frame_bytes,
            write_limit=limits.write_limit,
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()


class Publisher:
    """Publishes ``rate`` changes per second from ``start`` to ``stop``.

    Fan-out (``catch_up=False``): when the loop falls behind, a burst is capped at
    ``burst_cap`` changes, the missed ones are not made up later (``offered`` counts what
    was really published), and a change is stamped when it is published: latency is
    publish-to-receive.

    Profit (``catch_up=True``): every change is published, however late (one burst of
    all that fell due while the loop was busy), and stamped with the moment it was due,
    as if it had been waiting in the server's socket: latency is from the change to the
    frame, including any time the server took to get to it.
    """

    def __init__(
        self,
        server: BenchServer,
        source: BboSource,
        *,
        rate: float,
        burst_cap: int,
        catch_up: bool = False,
    ) -> None:
        self._server = server
        self._source = source
        self._rate = rate
        self._burst_cap = burst_cap
        self._catch_up = catch_up
        self._task: asyncio.Task[None] | None = None
        self.offered = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started, started_ns = loop.time(), time.time_ns()
        spacing = change_spacing_ns(self._rate)
        due_total = 0
        while True:
            due = int((loop.time() - started) * self._rate) - due_total
            if due > 0:
                due_total += due
                if self._catch_up:  # every change due, each stamped at its own due time
                    count = due
                    first_due = started_ns + (due_total - count + 1) * spacing
                    changes = self._source.changes(count, first_due, spacing)
                else:
                    count = min(due, self._burst_cap)
                    changes = self._source.changes(count, time.time_ns())
                self._server.publish(changes)
                self.offered += count
            await asyncio.sleep(PERIOD)


class ServerKind(StrEnum):
    MARKETCAST = MarketcastServer.name
    RAW = RawBroadcastServer.name


@dataclass(frozen=True, slots=True)
class ServerSpec:
    kind: ServerKind
    batched: bool
    instruments: int
    max_connections: int = 20_000
    accounts: int = 0
    """Profit: accounts with positions (marketcast only)."""
    catch_up: bool = False
    """Publish every due change, stamped when due (``Publisher``)."""


@dataclass(frozen=True, slots=True)
class FanoutCounts:
    """Marketcast's fan-out counters (``publish.counters.Counters``) over a window: every
    channel's, so on a profit server (only profit subscribers) they count its
    ``profit`` and ``profit_total`` messages."""

    conflated: int = 0
    """Queued messages replaced by a newer one before being written."""
    encoded: int = 0
    """Messages encoded, once for all subscribers of their topic."""
    sent: int = 0
    """Messages written to subscribers (one per subscriber that got it)."""
    frames: int = 0
    """Websocket frames written (a batch frame holds many messages)."""

    @classmethod
    def of(cls, counters: Counters) -> FanoutCounts:
        return cls(
            counters.conflated,
            counters.messages_encoded,
            counters.messages_sent,
            counters.frames_sent,
        )

    def __sub__(self, earlier: FanoutCounts) -> FanoutCounts:
        return FanoutCounts(
            self.conflated - earlier.conflated,
            self.encoded - earlier.encoded,
            self.sent - earlier.sent,
            self.frames - earlier.frames,
        )


@dataclass(frozen=True, slots=True)
class ServerWindow:
    """What the server process did during one measurement window."""

    seconds: float
    offered: int
    """Changes published."""
    cpu_seconds: float
    """CPU time of the server process (server + publisher, all threads)."""
    fanout: FanoutCounts
    """What marketcast's fan-out did (zeros for the raw broadcast)."""


SETTLE_SECONDS = 0.5
"""Pause after ``gc.collect()`` before reading the resident set size."""


class _ServerSide:
    """The child side: one server under test and its publisher."""

    def __init__(self) -> None:
        self._server: BenchServer | None = None
        self._source: BboSource | None = None
        self._publisher: Publisher | None = None
        self._burst_cap = 0
        self._catch_up = False
        self._mark = (0.0, 0.0, 0, FanoutCounts())

    def _fanout_counts(self) -> FanoutCounts:
        server = self._server
        if isinstance(server, MarketcastServer):
            return FanoutCounts.of(server.fanout.counters)
        return FanoutCounts()

    async def handle(self, command: Command) -> Command:
        match command:
            case ("start", ServerSpec() as spec):
                names = instrument_names(spec.instruments)
                server: BenchServer = (
                    MarketcastServer(
                        names,
                        batched=spec.batched,
                        max_connections=spec.max_connections,
                        accounts=spec.accounts,
                    )
                    if spec.kind is ServerKind.MARKETCAST
                    else RawBroadcastServer(batched=spec.batched)
                )
                await server.start()
                self._server, self._source, self._burst_cap = server, BboSource(names), len(names)
                self._catch_up = spec.catch_up
                return (
                    "started",
                    server.url,
                    server.subscribe_frame(),
                    server.subscribe_frame(names[:1]),
                )
            case ("positions", int(total)):
                assert isinstance(self._server, MarketcastServer)
                return ("positions", self._server.set_positions(total))
            case ("spread",):
                assert isinstance(self._server, MarketcastServer)
                return ("spread", self._server.spread())
            case ("profit_requests",):
                assert isinstance(self._server, MarketcastServer)
                return ("profit_requests", self._server.profit_requests())
            case ("rss", float(settle)):
                gc.collect()
                await asyncio.sleep(settle)
                return ("rss", rss_bytes())
            case ("drive", float(rate)):
                assert self._server is not None and self._source is not None
                self._publisher = Publisher(
                    self._server,
                    self._source,
                    rate=rate,
                    burst_cap=self._burst_cap,
                    catch_up=self._catch_up,
                )
                self._publisher.start()
                return ("driving",)
            case ("window",):
                offered = self._publisher.offered if self._publisher else 0
                self._mark = (
                    time.perf_counter(),
                    time.process_time(),
                    offered,
                    self._fanout_counts(),
                )
                return ("window",)
            case ("measure",):
                started, cpu, offered, counts = self._mark
                now_offered = self._publisher.offered if self._publisher else 0
                return (
                    "measured",
                    ServerWindow(
                        seconds=time.perf_counter() - started,
                        offered=now_offered - offered,
                        cpu_seconds=time.process_time() - cpu,
                        fanout=self._fanout_counts() - counts,
                    ),
                )
            case ("halt",):
                if self._publisher is not None:
                    await self._publisher.stop()
                    self._publisher = None
                return ("halted",)
            case ("exit",):
                if self._publisher is not None:
                    await self._publisher.stop()
                if self._server is not None:
                    await self._server.stop()
                return ("stopped",)
        raise ValueError(f"unknown command {command!r}")


def _server_main(pipe: Connection) -> None:
    serve_commands(pipe, _ServerSide().handle)


class ServerProcess(HelperProcess):
    """A fresh process running one server under test (blocking calls)."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        super().__init__(_server_main, "start", spec)
        _, self.url, self.subscribe_all, self.subscribe_one = self.started

    @property
    def name(self) -> str:
        return self.spec.kind.value

    def rss(self, settle: float = SETTLE_SECONDS) -> int:
        """Resident set size after ``gc.collect()`` and a pause of ``settle`` seconds."""
        return int(self._agent.ask("rss", float(settle))[1])

    def set_positions(self, total: int) -> int:
        """Open or close positions until ``total`` are open (profit); returns how many are."""
        return int(self._agent.ask("positions", total)[1])

    def spread(self) -> Spread:
        """How the open positions are spread over the accounts and instruments (profit)."""
        spread: Spread = self._agent.ask("spread")[1]
        return spread

    def profit_requests(self) -> list[tuple[bytes, ...]]:
        """Per account, the frames that authenticate and subscribe to its profit."""
        requests: list[tuple[bytes, ...]] = self._agent.ask("profit_requests")[1]
        return requests

    def drive(self, rate: float) -> None:
        """Start publishing ``rate`` changes per second."""
        self._agent.ask("drive", float(rate))

    def window(self) -> None:
        """Start a measurement window."""
        self._agent.ask("window")

    def measure(self) -> ServerWindow:
        """End the window: what happened since ``window``."""
        window: ServerWindow = self._agent.ask("measure")[1]
        return window

    def halt(self) -> None:
        """Stop publishing."""
        self._agent.ask("halt")
