"""Scenario 6b: instructions per open counted by callgrind. The arithmetic of a phase,
the server process's spec, and a real count: the lean server under valgrind, real
websocket clients, the counters zeroed and read by ``callgrind_control``."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from bench import opcost
from bench.opcost import (
    CallgrindError,
    Counted,
    CountedServer,
    OpCostOptions,
    Phase,
    _Clients,
    _phases,
)
from bench.opcostserver import spec_from_json, spec_json
from bench.orderclients import auth_requests
from bench.orderservers import OrderServerKind, OrderServerSpec
from bench.report import Progress
from bench.servers import instrument_names


def test_a_phase_takes_the_servers_idle_rate_off_for_its_length() -> None:
    phase = Phase(
        instructions=5_000_000,
        seconds=2.0,
        opens=100,
        idle_instructions=1_000_000,
        idle_seconds=4.0,
    )
    assert phase.idle_rate == 250_000
    assert phase.per_open == (5_000_000 - 500_000) / 100
    assert phase.raw_per_open == 50_000


def test_the_median_phase_decides() -> None:
    phases = tuple(
        Phase(instructions=n * 100, seconds=1.0, opens=100, idle_instructions=0, idle_seconds=1.0)
        for n in (300, 100, 200)
    )
    counted = Counted(OrderServerKind.LEAN, phases)
    assert counted.per_open == 200
    assert counted.idle_rate == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_server_process_gets_the_spec_it_was_given(backend: str) -> None:
    spec = OrderServerSpec(
        kind=OrderServerKind.MARKETCAST,
        instruments=("bench:SYM0000-USD", "bench:SYM0001-USD"),
        connections=7,
        secret="s3cret",
        backend=backend,
        pg_dsn="postgresql://bench@127.0.0.1:5432/test" if backend == "postgres" else "",
        pg_schema="marketcast_bench_opcost_1" if backend == "postgres" else "",
    )
    assert spec_from_json(spec_json(spec)) == spec


def test_marketcast_on_postgresql_has_a_row_and_figures_of_its_own() -> None:
    phases = (Phase(instructions=100, seconds=1.0, opens=1, idle_instructions=0, idle_seconds=1),)
    on_sqlite = Counted(OrderServerKind.MARKETCAST, phases)
    on_postgres = Counted(OrderServerKind.MARKETCAST, phases, "postgres")
    assert (on_sqlite.label, on_sqlite.key) == ("marketcast", "marketcast")
    assert (on_postgres.label, on_postgres.key) == (
        "marketcast on PostgreSQL",
        "marketcast_postgres",
    )


def test_without_valgrind_the_scenario_says_why_and_counts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    result = opcost.run(OpCostOptions.quick(), Progress())
    assert not result.tables and not result.figures
    assert result.notes == ["not run: valgrind and callgrind_control not found (install valgrind)"]


@pytest.mark.skipif(
    opcost.callgrind_available() is not None, reason="valgrind (callgrind) is not installed"
)
def test_the_lean_server_is_counted_under_callgrind_and_a_refusal_fails_the_count(
    tmp_path: Path,
) -> None:
    secret = os.urandom(16).hex()
    instruments = tuple(instrument_names(2))
    spec = OrderServerSpec(
        kind=OrderServerKind.LEAN, instruments=instruments, connections=3, secret=secret
    )
    auth = auth_requests(secret, 3)
    options = OpCostOptions(connections=3, warmup_rounds=1, rounds=4, phases=2, idle_seconds=0.5)
    server = CountedServer(spec, tmp_path, startup_timeout=300)
    try:
        phases = asyncio.run(
            _phases(server, OrderServerKind.LEAN, auth, instruments, options, Progress())
        )

        async def open_an_unknown_instrument() -> None:
            clients = await _Clients.open(server.url, auth[:1], ["bench:NOSUCH-USD"])
            try:
                await clients.rounds(1)
            finally:
                await clients.close()

        with pytest.raises(CallgrindError, match="not an ack"):
            asyncio.run(open_an_unknown_instrument())
    finally:
        server.stop()
    assert [phase.opens for phase in phases] == [12, 12]
    for phase in phases:
        # An open is tens of thousands of instructions at least, and far below a billion.
        assert 10_000 < phase.per_open < 1_000_000_000
        assert phase.idle_instructions >= 0 and phase.instructions > phase.idle_instructions
