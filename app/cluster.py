"""``marketcast cluster``: many cores on one machine, one supervisor and its children.

The supervisor starts a nats-server on a free loopback port (unless ``[bus].url`` is
set), one ingest (its HTTP on a port of its own), K positions shards (shard k gets
``MARKETCAST_BUS__SHARD=k`` and an HTTP port of its own; every child
``MARKETCAST_BUS__SHARDS=K``) and N edges
sharing ``[server].port`` (SO_REUSEPORT), each a ``marketcast run --role ...`` process
whose output lines it forwards prefixed with the child's name. A child that dies is
restarted after a capped backoff (logged); on SIGINT/SIGTERM the edges, then the shards
and the ingest (which drain storage), then NATS get SIGTERM, and SIGKILL past a grace
period.

No child outlives the supervisor, even one that is SIGKILLed: every child is started
with ``PR_SET_PDEATHSIG`` = SIGTERM (Linux; the kernel signals it when the supervisor
dies), and the marketcast children also watch a pipe whose only writer is the
supervisor: EOF means it is gone, and they shut down cleanly (``exit_with_parent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from bus.credentials import redact_urls
from bus.natsserver import find_nats_server, free_port, port_open

log = logging.getLogger("marketcast.cluster")

PARENT_FD_ENV = "MARKETCAST_PARENT_FD"
"""Set in a child of the supervisor: the fd of the pipe whose EOF means it died."""
STOP_GRACE_SECONDS = 15.0
"""How long a child may take to stop after SIGTERM (the ingest drains storage)."""
MAX_BACKOFF_SECONDS = 10.0
STABLE_SECONDS = 30.0
"""A child that ran this long is healthy again: its next restart waits the least."""
PR_SET_PDEATHSIG = 1
LOGIN_ENV = tuple(
    f"MARKETCAST_BUS__{key.upper()}"
    for key in (
        "user",
        "password",
        "token",
        "creds_file",
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
    )
)
"""The ``[bus]`` login and TLS keys, cleared for a cluster's own loopback nats-server."""


def supervised() -> bool:
    """True in a child of ``marketcast cluster`` (which prints the one banner)."""
    return PARENT_FD_ENV in os.environ


def die_with_parent() -> None:
    """``preexec_fn`` of every child: SIGTERM when the supervisor dies (Linux)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def exit_with_parent(
    coro: Coroutine[Any, Any, None], *, grace: float = STOP_GRACE_SECONDS
) -> None:
    """Run ``coro``; cancel it (a clean shutdown) when the supervisor that started this
    process is gone: its pipe (``PARENT_FD_ENV``) reads EOF. A shutdown still running
    ``grace`` seconds later is cut short: the process exits with status 1 (no child
    outlives its supervisor, even one whose cleanup hangs)."""
    value = os.environ.get(PARENT_FD_ENV)
    if value is None:
        await coro
        return
    fd = int(value)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:
        log.warning("the cluster supervisor is gone; stopping")
        loop.remove_reader(fd)
        task.cancel()
        # A thread, not the loop's timer: it fires even when the loop is what hangs.
        watchdog = threading.Timer(grace, _exit_unclean, args=(grace,))
        watchdog.daemon = True
        watchdog.start()

    loop.add_reader(fd, parent_gone)
    try:
        await coro
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)


def _exit_unclean(grace: float) -> None:
    # Straight to the fd: a logging handler's lock may be held by the thread that hangs.
    message = f"marketcast: still stopping {grace:.0f} s after the supervisor went; exiting\n"
    with contextlib.suppress(OSError):
        os.write(2, message.encode())
    os._exit(1)


@dataclass(slots=True)
class Child:
    """One supervised process and its restart state."""

    name: str
    command: list[str]
    python: bool = True
    """A marketcast child: it gets the parent pipe."""
    env: dict[str, str] = field(default_factory=dict)
    """Set in its environment (``MARKETCAST_BUS__SHARD`` of a positions shard)."""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = 0.5
    forwarders: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """What ``marketcast cluster`` runs."""

    host: str
    port: int
    """The edges' shared websocket/HTTP port."""
    ingest_port: int
    nats_url: str
    """The bus as the banner shows it (no password)."""
    start_nats: bool
    nats_port: int
    edges: int
    run_args: tuple[str, ...]
    """Arguments every ``marketcast run`` child gets (``--config FILE`` ...)."""
    cli_args: tuple[str, ...] = ()
    """Arguments before ``run`` (``--log-format json``)."""
    shards: int = 1
    """Positions shards (``marketcast run --role positions``, shard k of them)."""
    shard_ports: tuple[int, ...] = ()
    """Shard k's HTTP (/health, /metrics) port: ``shard_ports[k]``."""
    bus_servers: tuple[str, ...] = ()
    """``[bus].url``'s servers when set (``start_nats`` false)."""

    def http_ports(self) -> list[int]:
        """The ports of the nodes with an HTTP port of their own: ingest, then shards."""
        return [self.ingest_port, *self.shard_ports]

    def children(self) -> list[Child]:
        marketcast = [sys.executable, "-m", "app.cli", *self.cli_args]
        run = [*marketcast, "run", *self.run_args]
        children = []
        if self.start_nats:
            command = [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(self.nats_port)]
            children.append(Child("nats", command, python=False))
        children.append(
            Child("ingest", [*run, "--role", "ingest", "--port", str(self.ingest_port)])
        )
        for shard in range(self.shards):
            children.append(
                Child(
                    f"positions-{shard}",
                    [*run, "--role", "positions", "--port", str(self.shard_ports[shard])],
                    env={"MARKETCAST_BUS__SHARD": str(shard)},
                )
            )
        for index in range(1, self.edges + 1):
            children.append(
                Child(f"edge-{index}", [*run, "--role", "edge", "--port", str(self.port)])
            )
        for child in children:
            if child.python:  # every node must agree on the shard count and the bus
                child.env["MARKETCAST_BUS__SHARDS"] = str(self.shards)
                child.env |= self.bus_env()
        return children

    def bus_env(self) -> dict[str, str]:
        """The bus of every marketcast child, in its environment (never on a command line,
        where ``ps`` shows it): ``[bus].url`` as given, or the nats-server started here,
        which is on loopback with no login, so ``[bus]`` credentials and TLS are cleared
        for it."""
        if not self.start_nats:
            servers = ", ".join(f'"{url}"' for url in self.bus_servers)
            return {"MARKETCAST_BUS__URL": f"[{servers}]"}
        return {"MARKETCAST_BUS__URL": self.nats_url} | dict.fromkeys(LOGIN_ENV, "")


def plan_cluster(
    *,
    host: str,
    port: int,
    edges: int,
    bus_servers: Sequence[str] = (),
    run_args: Sequence[str],
    cli_args: Sequence[str] = (),
    shards: int = 1,
) -> ClusterPlan:
    nats_port = free_port()
    ports: list[int] = []
    while len(ports) < 1 + shards:  # the ingest's and each shard's, all different
        candidate = free_port(host)
        if candidate not in (port, nats_port, *ports):
            ports.append(candidate)
    return ClusterPlan(
        host=host,
        port=port,
        ingest_port=ports[0],
        shard_ports=tuple(ports[1:]),
        nats_url=redact_urls(bus_servers) if bus_servers else f"nats://127.0.0.1:{nats_port}",
        start_nats=not bus_servers,
        bus_servers=tuple(bus_servers),
        nats_port=nats_port,
        edges=edges,
        run_args=tuple(run_args),
        cli_args=tuple(cli_args),
        shards=shards,
    )


class Supervisor:
    """Starts the plan's children, restarts the ones that die, stops them all."""

    def __init__(
        self,
        plan: ClusterPlan,
        *,
        on_ready: Callable[[ClusterPlan], None] | None = None,
        output: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        self.plan = plan
        self.children = plan.children()
        self.on_ready = on_ready
        self.output = output
        self._stopping = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_inheritable(self._read_fd, True)

    async def run(self) -> None:
        """Until cancelled; then stop every child (edges, ingest, NATS last)."""
        try:
            async with asyncio.TaskGroup() as group:
                for child in self.children:
                    await self._start(child)
                    if child.name == "nats":
                        await self._wait_port("127.0.0.1", self.plan.nats_port, child)
                    group.create_task(self._watch(child), name=f"watch:{child.name}")
                await self._wait_port(self.plan.host, self.plan.port, None)
                for port in self.plan.http_ports():
                    await self._wait_port(self.plan.host, port, None)
                if self.on_ready is not None:
                    self.on_ready(self.plan)
        finally:
            self._stopping = True
            await self._stop_all()
            os.close(self._write_fd)
            os.close(self._read_fd)

    async def _start(self, child: Child) -> None:
        env = dict(os.environ) | child.env
        pass_fds: tuple[int, ...] = ()
        if child.python:
            env[PARENT_FD_ENV] = str(self._read_fd)
            pass_fds = (self._read_fd,)
        child.process = await asyncio.create_subprocess_exec(
            *child.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            pass_fds=pass_fds,
            preexec_fn=die_with_parent,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops them in order
        )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)
        assert child.process.stdout is not None
        child.forwarders = [asyncio.create_task(self._forward(child.name, child.process.stdout))]

    async def _forward(self, name: str, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.output(f"[{name}] {line.decode(errors='replace').rstrip()}")

    async def _watch(self, child: Child) -> None:
        """Restart ``child`` whenever it exits, after a capped, growing backoff."""
        while True:
            assert child.process is not None
            status = await child.process.wait()
            for forwarder in child.forwarders:
                with contextlib.suppress(asyncio.CancelledError):
                    await forwarder
            if self._stopping:
                return
            if time.monotonic() - child.started_at >= STABLE_SECONDS:
                child.backoff = 0.5
            log.warning(
                "%s exited with status %s; restarting in %.1f s", child.name, status, child.backoff
            )
            await asyncio.sleep(child.backoff)
            child.backoff = min(child.backoff * 2, MAX_BACKOFF_SECONDS)
            child.restarts += 1
            await self._start(child)

    async def _wait_port(self, host: str, port: int, child: Child | None) -> None:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(port_open, host, port):
            if (
                child is not None
                and child.process is not None
                and child.process.returncode is not None
            ):
                raise RuntimeError(f"{child.name} exited with status {child.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} after 60 s")
            await asyncio.sleep(0.05)

    async def _stop_all(self) -> None:
        edges = [child for child in self.children if child.name.startswith("edge")]
        shards = [child for child in self.children if child.name.startswith("positions")]
        ingest = [child for child in self.children if child.name == "ingest"]
        nats = [child for child in self.children if child.name == "nats"]
        for group in (edges, shards, ingest, nats):
            await asyncio.gather(*(self._stop(child) for child in group))

    async def _stop(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE_SECONDS):
                await process.wait()
        except TimeoutError:
            log.error("%s did not stop within %.0f s; killing it", child.name, STOP_GRACE_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        for forwarder in child.forwarders:
            with contextlib.suppress(asyncio.CancelledError):
                await forwarder
        log.info("%s stopped (status %s)", child.name, process.returncode)
