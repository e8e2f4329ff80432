"""Scenario 5, connections: N idle subscribers held open; server memory per connection.

The subscriber process (``bench/subscribers.py``) opens N websocket connections to the
server, which runs in a fresh process of its own; each subscribes to the ``bbo`` of one
instrument (marketcast) and then stays idle, answering pings. Memory per connection is
the growth of the server process's resident set size from before the first connection
to after the last one subscribed (``gc.collect()`` and a pause before each reading),
divided by N. The floor is the same count held by a bare ``websockets`` server (each
connection in a set, nothing else). Both processes raise their open-files limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.report import Progress, ScenarioResult, Table, megabytes, ratio
from bench.servers import SETTLE_SECONDS, ServerKind, ServerProcess, ServerSpec
from bench.subscribers import PoolSpec, SubscriberPool


@dataclass(frozen=True, slots=True)
class ConnectionsOptions:
    connections: int
    instruments: int = 100
    settle: float = SETTLE_SECONDS
    """Pause after ``gc.collect()`` before each reading of the server's memory."""

    @classmethod
    def quick(cls) -> ConnectionsOptions:
        return cls(connections=1000, settle=0.2)

    @classmethod
    def full(cls) -> ConnectionsOptions:
        return cls(connections=10_000)


@dataclass(frozen=True, slots=True)
class Held:
    server: str
    connections: int
    rss_before: int
    rss_after: int
    seconds_to_connect: float

    @property
    def per_connection(self) -> float:
        return (self.rss_after - self.rss_before) / self.connections


def hold(
    spec: ServerSpec, options: ConnectionsOptions, pool: SubscriberPool, progress: Progress
) -> Held:
    """One server in a fresh process holding ``options.connections`` idle subscribers."""
    with ServerProcess(spec) as server:
        before = server.rss(options.settle)
        progress.step(f"{server.name}: opening {options.connections:,} idle subscribers")
        started = time.perf_counter()
        requests = ((server.subscribe_one,),) if server.subscribe_one else ()
        pool.connect(PoolSpec(server.url, options.connections, requests))
        seconds = time.perf_counter() - started
        after = server.rss(options.settle)
        pool.close_clients()
    return Held(server.name, options.connections, before, after, seconds)


def hold_all(options: ConnectionsOptions, progress: Progress) -> list[Held]:
    with SubscriberPool() as pool:
        return [
            hold(
                ServerSpec(
                    kind, False, options.instruments, max_connections=options.connections + 100
                ),
                options,
                pool,
                progress,
            )
            for kind in ServerKind
        ]


def run(options: ConnectionsOptions, progress: Progress) -> ScenarioResult:
    progress.scenario("connections")
    held = hold_all(options, progress)
    progress.done()
    result = ScenarioResult(
        key="connections",
        title="5. Connections: idle subscribers held, memory per connection",
        how=(
            f"{options.connections:,} websocket connections from another process on "
            "loopback, each subscribed to one bbo (marketcast) and then idle. Memory per "
            "connection = server process RSS growth (after gc.collect() and "
            f"{options.settle:g} s) / connections; floor = a bare websockets server holding "
            "the same connections, in the same run."
        ),
    )
    floor = next((h for h in held if h.server == ServerKind.RAW), None)
    rows = []
    for h in held:
        rows.append(
            (
                h.server,
                f"{h.connections:,}",
                megabytes(h.rss_before),
                megabytes(h.rss_after),
                f"{h.per_connection / 1024:.1f}",
                "-"
                if floor is None or h is floor
                else ratio(h.per_connection, floor.per_connection),
                f"{h.connections / h.seconds_to_connect:,.0f}",
            )
        )
        key = "marketcast" if h.server == ServerKind.MARKETCAST else "raw"
        result.figures[f"{key}_bytes_per_connection"] = h.per_connection
        result.figures[f"{key}_connections"] = h.connections
    result.tables.append(
        Table(
            "memory per idle connection",
            (
                "server",
                "connections",
                "RSS before MB",
                "RSS held MB",
                "KB per connection",
                "vs bare websockets",
                "connects/s",
            ),
            rows,
        )
    )
    return result
