"""What every simulated venue shares: lifecycle, clients, market loop, generic faults.

A ``LoopbackVenue`` is an async context manager: entering starts one ``websockets``
server on ``host:port`` (``port=0`` picks a free one) and one owned task that steps
every symbol's ``SimulatedBook`` ``updates_per_second`` times a second (plus the venue's
own loops: pushes, heartbeats) until exit. The base keeps the connected clients, the
``FaultCounters`` and the faults every venue injects the same way (disconnect, silence,
malformed frame) and holds a symbol's snapshots on request (``hold_snapshots``); a
subclass speaks one exchange's protocol and injects the faults only it knows
(``_inject_into``, ``_announce``). ``run_simulator`` serves one until cancelled with
faults in rotation (``marketcast simulate``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from book.fixed import parse_fixed
from feeds.metadata import TradingStatus
from feeds.simulator.catalog import DEFAULT_HALF_SPREAD_BPS, HALF_SPREAD_BPS, simulated_symbols
from feeds.simulator.faults import INSTRUMENT_FAULTS, Fault, FaultCounters
from feeds.simulator.market import DepthSnapshot, SimSymbol, SimulatedBook
from feeds.simulator.reference import VenueReference, basis_points

MAX_UPDATES_PER_SECOND = 10_000.0
MAX_STEPS_PER_WAKE = 100
"""A market loop that fell behind catches up at most this many steps, then skips."""


class Connected(Protocol):
    """A venue's per-connection state: at least the connection itself."""

    @property
    def connection(self) -> ServerConnection: ...


ClientT = TypeVar("ClientT", bound=Connected)
Query = dict[str, list[str]]
RestRoute = Callable[[Query], Awaitable[tuple[int, bytes]]]
"""A REST handler: the parsed query string -> (HTTP status, JSON body)."""


class LoopbackVenue(ABC, Generic[ClientT]):
    """One simulated venue on loopback (see the module docstring).

    ``venue`` is the venue id (``binance-usdm``). ``symbols`` are the venue's own
    spellings (``None``: what the venue lists in ``feeds.simulator.catalog``); each gets
    a ``SimulatedBook`` of ``levels`` levels per side seeded from ``seed``, quoting the
    venue's half spread (``HALF_SPREAD_BPS``) around the shared reference price of its
    base asset at ``clock_ns`` (``feeds.simulator.reference``). ``clock_ns`` also stamps
    the venue's event times. Invalid settings raise ``ValueError``.
    """

    supported_faults: ClassVar[frozenset[Fault]]
    """The faults ``inject`` accepts."""
    malformed_frame: ClassVar[bytes]
    """A frame of this venue cut short: what ``send_malformed`` sends."""

    def __init__(
        self,
        *,
        venue: str,
        symbols: Sequence[SimSymbol] | None,
        updates_per_second: float,
        seed: int,
        levels: int,
        host: str,
        port: int,
        clock_ns: Callable[[], int],
    ) -> None:
        if not 0 < updates_per_second <= MAX_UPDATES_PER_SECOND:
            raise ValueError(f"updates_per_second must be in (0, {MAX_UPDATES_PER_SECOND}]")
        symbols = simulated_symbols(venue) if symbols is None else symbols
        if not symbols or len({spec.symbol for spec in symbols}) != len(symbols):
            raise ValueError("symbols must be non-empty and distinct")
        self.venue = venue
        self.listed: tuple[SimSymbol, ...] = tuple(symbols)
        """What the venue's metadata lists, in order: at first every instrument served
        (``set_listing`` changes it while running)."""
        self._specs = {spec.symbol: spec for spec in symbols}
        self._rest_failure: tuple[int, bytes] | None = None
        self._books = {
            spec.symbol: _quoting_book(spec, venue, levels=levels, seed=seed, clock_ns=clock_ns)
            for spec in symbols
        }
        self._period = 1.0 / updates_per_second
        self._clock_ns = clock_ns
        self._host = host
        self._requested_port = port
        self._name = f"{venue}-simulator"
        self._clients: set[ClientT] = set()
        self._connections_accepted = 0
        self._faults = FaultCounters()
        self._running = asyncio.Event()
        self._running.set()
        self._silent_until = 0.0
        self._held: dict[str, asyncio.Event] = {}
        """Symbols whose snapshots are held -> set when they are released."""
        self._server: Server | None = None
        self._port = 0
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._serve_client,
            self._host,
            self._requested_port,
            process_request=self._process_request,
            ping_interval=20,
            ping_timeout=60,
            max_size=2**16,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._runner = asyncio.create_task(self._run(), name=self._name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for symbol in list(self._held):  # nothing may wait for a release that never comes
            self.release_snapshots(symbol)
        try:
            if self._runner is not None:
                self._runner.cancel()
                try:
                    await self._runner
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
        finally:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

    # -- public view -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (0 before start)."""
        return self._port

    @property
    def ws_url(self) -> str:
        """Base websocket URL (``ws://host:port``)."""
        return f"ws://{self._host}:{self.port}"

    @property
    def rest_url(self) -> str:
        """Base REST URL (``http://host:port``): metadata and snapshots are served on the
        websocket port."""
        return f"http://{self._host}:{self.port}"

    @property
    @abstractmethod
    def endpoints(self) -> Mapping[str, str]:
        """What a client connects to, by purpose (``{"websocket": "ws://.."}``)."""

    @property
    def symbols(self) -> tuple[str, ...]:
        """Venue symbols served, as the venue spells them."""
        return tuple(self._books)

    @property
    def faults(self) -> FaultCounters:
        return self._faults

    @property
    def clients(self) -> int:
        """Websocket clients connected now."""
        return len(self._clients)

    @property
    def connections_accepted(self) -> int:
        """Websocket connections accepted since start (reconnects count)."""
        return self._connections_accepted

    def book(self, symbol: str, limit: int | None = None) -> DepthSnapshot:
        """The true current book of ``symbol`` (``KeyError`` if not simulated)."""
        return self._books[symbol].snapshot(limit)

    def set_listing(self, symbol: str, status: TradingStatus | None) -> None:
        """List ``symbol`` (a venue symbol served) in the metadata with ``status`` from now
        on, or not at all (``None``: delisted, or not listed yet); its book goes on.
        ``KeyError`` if it is not served."""
        spec = replace(self._specs[symbol], status=status or TradingStatus.TRADING)
        self._specs[symbol] = spec
        listed = {item.symbol: item for item in self.listed}
        if status is None:
            listed.pop(symbol, None)
        else:
            listed[symbol] = spec
        self.listed = tuple(item for name, item in self._specs.items() if name in listed)

    def fail_rest(self, status: int = 500, body: bytes = b'{"msg":"Internal error"}') -> None:
        """Answer every REST request (metadata, snapshots) with ``status`` and ``body``
        until ``restore_rest`` (a venue's REST outage, or a bad answer with 200)."""
        self._rest_failure = (status, body)

    def restore_rest(self) -> None:
        self._rest_failure = None

    def pause(self) -> None:
        """Stop the market loops until ``resume``."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def hold_snapshots(self, symbol: str) -> None:
        """Leave what would (re)sync ``symbol`` unanswered until ``release_snapshots``:
        new subscriptions get no snapshot (nor updates), REST snapshot requests no reply.
        A slow snapshot, so tests can watch the other symbols stream while one resyncs.
        """
        if symbol not in self._books:
            raise KeyError(symbol)
        self._held.setdefault(symbol, asyncio.Event())

    def release_snapshots(self, symbol: str) -> None:
        """Answer what was held for ``symbol``; it syncs as usual from now on."""
        released = self._held.pop(symbol, None)
        if released is not None:
            released.set()
            self._on_release(symbol)

    # -- faults ----------------------------------------------------------------------

    def inject(
        self, fault: Fault, *, symbol: str | None = None, silence_seconds: float = 5.0
    ) -> None:
        """Inject ``fault`` now.

        Instrument faults (``INSTRUMENT_FAULTS``) hit ``symbol``, or every symbol when it
        is ``None``; the others hit every connection. ``ValueError`` for a fault this
        venue does not support or a ``symbol`` given to a connection fault; ``KeyError``
        for a symbol it does not simulate.
        """
        if fault not in self.supported_faults:
            supported = ", ".join(sorted(self.supported_faults))
            raise ValueError(f"{self._name} cannot inject '{fault}' (supports: {supported})")
        if fault in INSTRUMENT_FAULTS:
            for name in self.symbols if symbol is None else (symbol,):
                if name not in self._books:
                    raise KeyError(name)
                self._inject_into(fault, name)
            return
        if symbol is not None:
            raise ValueError(f"'{fault}' hits every connection, not one symbol")
        match fault:
            case Fault.DISCONNECT:
                self.disconnect_all()
            case Fault.SILENCE:
                self.go_silent(silence_seconds)
            case Fault.MALFORMED:
                self.send_malformed()
            case _:
                self._announce(fault)

    def disconnect_all(self) -> None:
        """Abort every client connection (no close frame: the client sees 1006)."""
        clients = list(self._clients)
        for client in clients:
            self._unregister(client)
            client.connection.transport.abort()
        self._count(disconnected=len(clients))

    def go_silent(self, seconds: float) -> None:
        """Send no market data for ``seconds`` (see ``_is_silent``); connections stay
        open and control requests are answered. The market moves on and what it would
        have sent is lost, so clients see a gap (or a wrong book) when data resumes."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self._silent_until = max(self._silent_until, time.monotonic() + seconds)
        self._count(silences=1)

    def send_malformed(self) -> None:
        """Send one truncated-JSON text frame (``malformed_frame``) to every client."""
        self._count(malformed=self._to_all(self.malformed_frame))

    @abstractmethod
    def _inject_into(self, fault: Fault, symbol: str) -> None:
        """Inject a supported instrument fault into ``symbol``."""

    @abstractmethod
    def _announce(self, fault: Fault) -> None:
        """Send the venue message of a supported ``ERROR`` or ``SHUTDOWN`` fault."""

    def _is_held(self, symbol: str) -> bool:
        return symbol in self._held

    async def _released(self, symbol: str) -> None:
        """Return once ``symbol``'s snapshots are not held (at once if they are not)."""
        held = self._held.get(symbol)
        if held is not None:
            await held.wait()

    def _on_release(self, symbol: str) -> None:
        """Send what ``hold_snapshots`` kept back (nothing: the venue sends it at its next
        push, or waited in ``_released``)."""

    def _count(self, **increments: int) -> None:
        faults = self._faults
        self._faults = replace(
            faults, **{name: getattr(faults, name) + n for name, n in increments.items()}
        )

    def _is_silent(self) -> bool:
        return time.monotonic() < self._silent_until

    # -- sending ---------------------------------------------------------------------

    def _send(self, clients: Collection[ClientT], frame: bytes) -> None:
        """Queue one text frame to ``clients`` now, in order with everything else sent
        (``websockets.broadcast``: no await, no per-client backpressure)."""
        broadcast([client.connection for client in clients], frame, text=True)

    def _to_all(self, frame: bytes | Callable[[ClientT], bytes]) -> int:
        """Send ``frame`` (or ``frame(client)``) to every client; how many got one."""
        clients = list(self._clients)
        if isinstance(frame, bytes):
            self._send(clients, frame)
        else:
            for client in clients:
                self._send([client], frame(client))
        return len(clients)

    # -- clients ---------------------------------------------------------------------

    async def _serve_client(self, connection: ServerConnection) -> None:
        self._connections_accepted += 1
        client = self._accept(connection)
        self._clients.add(client)
        try:
            await self._converse(client)
        except ConnectionClosed:
            pass
        finally:
            self._unregister(client)

    @abstractmethod
    def _accept(self, connection: ServerConnection) -> ClientT:
        """The state of a new connection (number ``connections_accepted``); may greet it."""

    async def _converse(self, client: ClientT) -> None:
        """Answer the client's messages until it leaves."""
        async for message in client.connection:
            self._on_message(client, message)

    @abstractmethod
    def _on_message(self, client: ClientT, message: str | bytes) -> None:
        """Answer one client message, as the venue does."""

    def _unregister(self, client: ClientT) -> None:
        self._forget(client)
        self._clients.discard(client)

    @abstractmethod
    def _forget(self, client: ClientT) -> None:
        """Remove a leaving client from every subscription."""

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """HTTP before the websocket handshake: the venue's REST routes are answered
        here (JSON), its websocket paths go on to the handshake (``None``), anything
        else gets 404."""
        url = urlsplit(request.path)
        route = self._rest_routes().get(url.path)
        if route is not None:
            failure = self._rest_failure
            status, body = failure or await route(parse_qs(url.query))
            response = connection.respond(status, body.decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json;charset=UTF-8"
            return response
        if self._is_websocket_path(url.path):
            return None
        return connection.respond(404, "Not Found\n")

    def _rest_routes(self) -> Mapping[str, RestRoute]:
        """The venue's public REST paths served on the websocket port (its instrument
        metadata, REST snapshots): path -> handler of the parsed query string."""
        return {}

    def _is_websocket_path(self, path: str) -> bool:
        """Whether a websocket client may connect on ``path`` (any path by default)."""
        return True

    # -- market ----------------------------------------------------------------------

    @abstractmethod
    def _step_market(self) -> None:
        """One market step of every symbol, and what the venue sends for it at once."""

    def _loops(self) -> list[Coroutine[Any, Any, None]]:
        """The venue's own background coroutines, run beside the market loop."""
        return []

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._periodic(self._period, self._step_market, MAX_STEPS_PER_WAKE))
            for loop in self._loops():
                tasks.create_task(loop)

    async def _periodic(self, period: float, action: Callable[[], None], max_burst: int) -> None:
        """Call ``action`` every ``period`` s on a drift-free schedule while running.

        A loop that fell behind catches up at most ``max_burst`` calls, then skips.
        """
        loop = asyncio.get_running_loop()
        next_at = loop.time() + period
        while True:
            if not self._running.is_set():
                await self._running.wait()
                next_at = loop.time() + period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            now = loop.time()
            burst = 0
            while next_at <= now and burst < max_burst and self._running.is_set():
                action()
                next_at += period
                burst += 1
            if next_at <= now:
                next_at = now + period


def _quoting_book(
    spec: SimSymbol, venue: str, *, levels: int, seed: int, clock_ns: Callable[[], int]
) -> SimulatedBook:
    """The book of ``spec`` on ``venue``, quoting around its asset's shared reference."""
    start = parse_fixed(spec.price)
    reference = VenueReference(
        seed=seed, asset=spec.base or spec.symbol, venue=venue, start=start, clock_ns=clock_ns
    )
    return SimulatedBook(
        spec,
        levels=levels,
        seed=seed,
        reference=reference,
        half_spread=basis_points(start, HALF_SPREAD_BPS.get(venue, DEFAULT_HALF_SPREAD_BPS)),
    )


VenueT = TypeVar("VenueT", bound=LoopbackVenue[Any])


async def run_simulator(
    simulator: VenueT,
    *,
    faults: Sequence[Fault] = (),
    fault_interval: float = 10.0,
    silence_seconds: float = 5.0,
    on_ready: Callable[[VenueT], None] | None = None,
) -> None:
    """Serve ``simulator`` until cancelled (``marketcast simulate``).

    ``on_ready`` gets the started simulator (to print its endpoints). ``faults`` are
    injected in rotation, one every ``fault_interval`` seconds, into every symbol or
    connection. ``ValueError`` (before starting) for a fault the venue does not support.
    """
    unsupported = ", ".join(fault for fault in faults if fault not in simulator.supported_faults)
    if unsupported:
        supported = ", ".join(sorted(simulator.supported_faults))
        raise ValueError(f"unsupported faults {unsupported} (supported: {supported})")
    if faults and fault_interval <= 0:
        raise ValueError("fault_interval must be positive")
    async with simulator:
        if on_ready is not None:
            on_ready(simulator)
        if not faults:
            await asyncio.Event().wait()
        for fault in itertools.cycle(faults):
            await asyncio.sleep(fault_interval)
            simulator.inject(fault, silence_seconds=silence_seconds)
