"""Scenario 6b, the CPU of one open, counted: user-space instructions per
``position.open`` in the server's process, for marketcast on SQLite, the lean Python
server and the websocket floor of scenario 6, and marketcast on PostgreSQL where one
answers (a schema of its own, dropped afterwards; PostgreSQL's own processes are not
counted).

Scenario 6 measures CPU in seconds, and on shared VMs seconds move: the same code's CPU
per open has differed by 2x between hosts, and within one run by more than most changes
to it. Instructions counted by callgrind do not move with the host: the same code, the
same Python and the same requests give the same count within a few percent. So this is
the figure that says whether a change made an open cheaper, and by how much marketcast's
layers cost more than the least a Python server does (the lean server) and than a bare
websocket request/reply (the floor).

How: each server runs in a process of its own (``bench.opcostserver``) under ``valgrind
--tool=callgrind``, which runs it some 50 times slower: no latency or rate means anything
here, only counts. This process opens ``connections`` websocket connections to it, each
authenticated as an account of its own, and sends rounds of one open per connection
(every open of a round sent, then every ack awaited; an answer that is not an ack fails
the scenario). After ``warmup_rounds`` it alternates, ``phases`` times:

- an idle phase: the counters zeroed, ``idle_seconds`` with nothing sent, then read. That
  is what the server's own timers (metrics, heap keeping, the fan-out's ticks) cost per
  second; callgrind's slowdown stretches a phase's seconds, so without this their share
  would be charged to the opens;
- a measured phase: the counters zeroed, ``rounds`` rounds, then read. Instructions per
  open = (the count - the idle rate x the phase's seconds) / opens.

Counts are of every thread of the server's process (SQLite's writer and checkpoint
threads too) and of user space only: the kernel's part (socket reads and writes, the
WAL's writes) is not in them, nor are cache misses or waits. With rounds of one open per
connection a commit holds about ``connections`` opens, as at some 5,000-20,000 opens/s
in scenario 6.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from bench.opcostserver import spec_json
from bench.orderclients import OPEN_TEMPLATE, auth_requests
from bench.orderservers import OrderServerKind, OrderServerSpec
from bench.postgres import drop_schemas, postgres_reachable
from bench.report import Progress, ScenarioResult, Table, number, ratio
from bench.servers import instrument_names
from bench.storage import DEFAULT_PG_DSN

_THREAD_COUNT = re.compile(r"^\s*Th\s+\d+\s+([\d,]+)\s*$", re.MULTILINE)
"""A thread's count in ``callgrind_control -e Ir``'s answer."""
_ACK = b'{"type":"ack",'
CONTENDERS = (
    OrderServerKind.WEBSOCKET_FLOOR,
    OrderServerKind.LEAN,
    OrderServerKind.MARKETCAST,
)


class CallgrindError(RuntimeError):
    """valgrind or ``callgrind_control`` failed, or the server under it did."""


@dataclass(frozen=True, slots=True)
class OpCostOptions:
    connections: int = 100
    warmup_rounds: int = 10
    rounds: int = 20
    phases: int = 3
    idle_seconds: float = 4.0
    instruments: int = 10
    startup_timeout: float = 600.0
    """Seconds a server may take to listen under callgrind."""
    pg_dsn: str | None = DEFAULT_PG_DSN
    """Where marketcast on PostgreSQL is counted too (``None``: not counted)."""

    @classmethod
    def quick(cls) -> OpCostOptions:
        return cls(connections=20, warmup_rounds=3, rounds=5, phases=2, idle_seconds=1.0)

    @classmethod
    def full(cls) -> OpCostOptions:
        return cls()


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured phase and the idle phase before it."""

    instructions: int
    seconds: float
    opens: int
    idle_instructions: int
    idle_seconds: float

    @property
    def idle_rate(self) -> float:
        """The server's instructions per second with nothing sent."""
        return self.idle_instructions / self.idle_seconds

    @property
    def per_open(self) -> float:
        return (self.instructions - self.idle_rate * self.seconds) / self.opens

    @property
    def raw_per_open(self) -> float:
        """Without the idle correction."""
        return self.instructions / self.opens


@dataclass(frozen=True, slots=True)
class Counted:
    server: OrderServerKind
    phases: tuple[Phase, ...]
    backend: str = "sqlite"

    @property
    def label(self) -> str:
        """The server, and its database where it is not SQLite."""
        return f"{self.server} on PostgreSQL" if self.backend == "postgres" else str(self.server)

    @property
    def key(self) -> str:
        """The server's name in the figures' keys."""
        name = self.server.name.lower()
        return f"{name}_postgres" if self.backend == "postgres" else name

    @property
    def per_open(self) -> float:
        return statistics.median(phase.per_open for phase in self.phases)

    @property
    def raw_per_open(self) -> float:
        return statistics.median(phase.raw_per_open for phase in self.phases)

    @property
    def idle_rate(self) -> float:
        return statistics.median(phase.idle_rate for phase in self.phases)


def callgrind_available() -> str | None:
    """Why this scenario cannot run here (``None``: it can)."""
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found" if missing else None


class CountedServer:
    """An order server in a process of its own under callgrind (blocking calls); its
    instruction count can be zeroed and read."""

    def __init__(self, spec: OrderServerSpec, directory: Path, startup_timeout: float) -> None:
        url_file = directory / "url"
        self._log_path = directory / "server.log"
        self._log = self._log_path.open("wb")
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={directory / 'callgrind.out'}",
            "--dump-instr=no",
            sys.executable,
            "-m",
            "bench.opcostserver",
            spec_json(spec),
            str(url_file),
        ]
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, cwd=directory, env=_env()
        )
        try:
            self.url = self._wait_for(url_file, startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_for(self, url_file: Path, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not url_file.exists():
            if self._process.poll() is not None:
                raise CallgrindError(
                    f"the server exited ({self._process.returncode}): {self._tail()}"
                )
            if time.monotonic() > deadline:
                raise CallgrindError(f"the server did not listen within {timeout:g} s")
            time.sleep(0.2)
        return url_file.read_text()

    def zero(self) -> None:
        self._control("-z")

    def count(self) -> int:
        """Instructions of every thread since the last ``zero``."""
        counts = _THREAD_COUNT.findall(self._control("-e", "Ir"))
        if not counts:
            raise CallgrindError("callgrind_control reported no thread's count")
        return sum(int(count.replace(",", "")) for count in counts)

    def _control(self, *args: str) -> str:
        answer = subprocess.run(
            ["callgrind_control", *args, str(self._process.pid)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if answer.returncode != 0:
            raise CallgrindError(f"callgrind_control {' '.join(args)}: {answer.stderr.strip()}")
        return answer.stdout

    def _tail(self) -> str:
        self._log.flush()
        return self._log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()


def _env() -> dict[str, str]:
    """This process's environment, with the project importable from anywhere."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


class _Clients:
    """The connections, each authenticated as an account of its own; rounds of opens."""

    def __init__(self, connections: Sequence[ClientConnection], instruments: Sequence[str]):
        self._connections = connections
        self._instruments = [name.encode() for name in instruments]
        self._sent = 0

    @classmethod
    async def open(cls, url: str, auth: Sequence[bytes], instruments: Sequence[str]) -> _Clients:
        connections: list[ClientConnection] = []
        for request in auth:
            connection = await connect(
                url, compression=None, ping_interval=None, open_timeout=300, close_timeout=60
            )
            connections.append(connection)
            await connection.send(request, text=True)
            _check_ack(await connection.recv(decode=False))
        return cls(connections, instruments)

    async def rounds(self, count: int) -> int:
        """Send ``count`` rounds of one open per connection; how many opens were acked."""
        for _ in range(count):
            await asyncio.gather(*(self._send_open(c) for c in self._connections))
            for connection in self._connections:
                _check_ack(await connection.recv(decode=False))
        return count * len(self._connections)

    async def _send_open(self, connection: ClientConnection) -> None:
        self._sent += 1
        n = self._sent
        instrument = self._instruments[n % len(self._instruments)]
        side = b"buy" if n % 2 else b"sell"
        await connection.send(
            OPEN_TEMPLATE % (n, n, instrument, side, n % 97 + 1, n % 89), text=True
        )

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()


def _check_ack(reply: bytes) -> None:
    if not reply.startswith(_ACK):
        raise CallgrindError(f"an answer that is not an ack: {reply[:200]!r}")


def count_server(
    kind: OrderServerKind, options: OpCostOptions, progress: Progress, *, pg_dsn: str = ""
) -> Counted:
    """One server: started under callgrind, warmed up, then ``options.phases`` idle and
    measured phases. On SQLite, or with ``pg_dsn`` on PostgreSQL in a schema of its own
    (dropped afterwards)."""
    secret = os.urandom(24).hex()
    auth = auth_requests(secret, options.connections)
    instruments = tuple(instrument_names(options.instruments))
    spec = OrderServerSpec(
        kind=kind, instruments=instruments, connections=options.connections, secret=secret
    )
    if pg_dsn:
        schema = f"marketcast_bench_opcost_{os.getpid()}"
        spec = replace(spec, backend="postgres", pg_dsn=pg_dsn, pg_schema=schema)
    with tempfile.TemporaryDirectory(prefix="marketcast-bench-opcost-") as directory:
        progress.step(f"{kind} on {spec.backend}: starting under callgrind")
        server = CountedServer(spec, Path(directory), options.startup_timeout)
        try:
            phases = asyncio.run(_phases(server, kind, auth, instruments, options, progress))
        finally:
            server.stop()
            if pg_dsn:
                asyncio.run(drop_schemas(pg_dsn, [spec.pg_schema]))
    return Counted(kind, phases, spec.backend)


async def _phases(
    server: CountedServer,
    kind: OrderServerKind,
    auth: Sequence[bytes],
    instruments: Sequence[str],
    options: OpCostOptions,
    progress: Progress,
) -> tuple[Phase, ...]:
    progress.step(f"{kind}: {options.connections} connections, warming up")
    clients = await _Clients.open(server.url, auth, instruments)
    try:
        await clients.rounds(options.warmup_rounds)
        phases = []
        for index in range(options.phases):
            progress.step(f"{kind}: phase {index + 1} of {options.phases}")
            with _counting(server) as idle:
                await asyncio.sleep(options.idle_seconds)
            with _counting(server) as measured:
                opens = await clients.rounds(options.rounds)
            phases.append(
                Phase(
                    measured.instructions, measured.seconds, opens, idle.instructions, idle.seconds
                )
            )
    finally:
        await clients.close()
    return tuple(phases)


@dataclass(slots=True)
class _Count:
    instructions: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def _counting(server: CountedServer) -> Iterator[_Count]:
    """The server's instructions, and the seconds, from entry to exit."""
    count = _Count()
    server.zero()
    started = time.perf_counter()
    yield count
    count.seconds = time.perf_counter() - started
    count.instructions = server.count()


def run(options: OpCostOptions, progress: Progress) -> ScenarioResult:
    progress.scenario("opcost")
    result = ScenarioResult(
        key="opcost",
        title="6b. Order entry's CPU per open, counted",
        how=(
            "User-space instructions per position.open in the server's process (every "
            "thread), counted by callgrind: each server alone under valgrind, "
            f"{options.connections} websocket connections from this process, rounds of one "
            f"open per connection (all sent, then every ack awaited), {options.warmup_rounds} "
            f"rounds of warm-up, then {options.phases} phases of {options.rounds} rounds, each "
            f"after {options.idle_seconds:g} s idle whose instructions per second (the "
            "server's own timers) are taken off the phase's count for its length. Median "
            "of the phases. Independent of the host's speed; not the kernel's part (socket "
            "reads and writes), cache misses or waits. Servers as in scenario 6: marketcast "
            "on SQLite, the lean Python server on SQLite, the websocket floor (no storage), "
            "and marketcast on PostgreSQL (its own processes not counted)."
        ),
    )
    why_not = callgrind_available()
    if why_not is not None:
        progress.done()
        result.notes.append(f"not run: {why_not} (install valgrind)")
        return result
    counted = [count_server(kind, options, progress) for kind in CONTENDERS]
    if options.pg_dsn is None:
        result.notes.append("marketcast on PostgreSQL not counted (--no-postgres)")
    elif (why := postgres_reachable(options.pg_dsn)) is not None:
        result.notes.append(f"marketcast on PostgreSQL not counted: {why}")
    else:
        counted.append(
            count_server(OrderServerKind.MARKETCAST, options, progress, pg_dsn=options.pg_dsn)
        )
    progress.done()
    by_kind = {c.server: c for c in counted if c.backend == "sqlite"}
    lean = by_kind[OrderServerKind.LEAN].per_open
    floor = by_kind[OrderServerKind.WEBSOCKET_FLOOR].per_open
    rows = []
    for c in counted:
        low = min(phase.per_open for phase in c.phases)
        high = max(phase.per_open for phase in c.phases)
        rows.append(
            (
                c.label,
                number(c.per_open),
                f"{number(low)}-{number(high)}",
                number(c.raw_per_open),
                number(c.idle_rate),
                ratio(c.per_open, lean),
                ratio(c.per_open, floor),
            )
        )
        result.figures[f"{c.key}_instructions_per_open"] = c.per_open
        result.figures[f"{c.key}_idle_instructions_per_second"] = c.idle_rate
    result.tables.append(
        Table(
            "user-space instructions per open, in the server's process",
            (
                "server",
                "per open",
                "phases' range",
                "without the idle correction",
                "idle per second",
                "vs the lean server",
                "vs the websocket floor",
            ),
            rows,
        )
    )
    marketcast = by_kind[OrderServerKind.MARKETCAST].per_open
    result.notes.append(
        f"marketcast spends {number(marketcast - lean)} instructions per open more than the "
        f"lean Python server and {number(marketcast - floor)} more than the websocket floor"
    )
    on_postgres = [c for c in counted if c.backend == "postgres"]
    if on_postgres:
        result.notes.append(
            f"on PostgreSQL marketcast spends {number(on_postgres[0].per_open - marketcast)}"
            " instructions per open more than on SQLite (its ratios are against the SQLite "
            "servers: the lean server and the floor run on SQLite or nothing)"
        )
    return result
