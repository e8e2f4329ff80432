"""Coinbase feed runners against the simulated Coinbase venue over real loopback sockets.

As the runtime does, each product gets its own connection (``max_instruments_per_
connection`` = 1): two runners share one registry, so a lost message resyncs only the
product whose connection lost it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from book.incidents import FeedIncident, IncidentKind
from book.registry import BookRegistry
from book.status import InstrumentState
from feeds.coinbase.adapter import CoinbaseAdapter
from feeds.runner import FeedRunner
from feeds.simulator.coinbase import CoinbaseSimulator
from feeds.symbols import SymbolMap
from tests.feeds.rig import (
    Observed,
    books_equal_simulator,
    feed_runner,
    observed_registry,
    running,
)
from tests.waiting import eventually

PRODUCTS = ("BTC-USD", "ETH-USD")
BTC, ETH = (f"coinbase:{product}" for product in PRODUCTS)
BOOKS = {BTC: PRODUCTS[0], ETH: PRODUCTS[1]}
DEPTH = 30
LIVE, STALE = InstrumentState.LIVE, InstrumentState.STALE


@dataclass
class Rig:
    simulator: CoinbaseSimulator
    runners: dict[str, FeedRunner]
    registry: BookRegistry
    seen: Observed
    incidents: dict[str, list[FeedIncident]] = field(default_factory=dict)
    """Each runner's own incidents (connection ones have no instrument)."""

    def kinds(self, name: str) -> list[IncidentKind]:
        return [incident.kind for incident in self.incidents[name]]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with CoinbaseSimulator(
        updates_per_second=200, levels=DEPTH, seed=7, heartbeat_interval=0.05
    ) as simulator:
        registry, seen = observed_registry()
        symbols = SymbolMap("coinbase", {product: product for product in PRODUCTS})
        incidents: dict[str, list[FeedIncident]] = {name: [] for name in symbols.instruments()}
        runners = {
            name: feed_runner(
                CoinbaseAdapter(symbols, ws_url=simulator.ws_url),
                registry,
                incidents[name].append,
                capture_depth=DEPTH,
                instruments=[name],
            )
            for name in symbols.instruments()
        }
        async with running(runners.values(), registry, runners):
            yield Rig(simulator, runners, registry, seen, incidents)


async def test_each_product_on_its_own_connection_equals_the_venue(rig: Rig) -> None:
    await books_equal_simulator(rig, BOOKS, None)
    assert rig.simulator.clients == 2
    assert [rig.simulator.subscribers(product) for product in PRODUCTS] == [1, 1]
    for name, runner in rig.runners.items():
        assert (runner.connections, runner.counters.gaps, runner.counters.malformed) == (1, 0, 0)
        assert rig.kinds(name) == [IncidentKind.CONNECT, IncidentKind.LIVE]


async def test_a_lost_message_resyncs_only_the_product_of_that_connection(rig: Rig) -> None:
    rig.simulator.drop_next("BTC-USD")
    await eventually(lambda: STALE in rig.seen.states[BTC], "BTC stale")
    eth_before = rig.seen.published[ETH]
    await eventually(lambda: rig.registry.is_live(BTC), "BTC live again")
    await eventually(lambda: rig.seen.published[ETH] > eth_before + 3, "ETH keeps streaming")
    assert rig.seen.states[BTC] == [LIVE, STALE, LIVE]
    assert rig.seen.states[ETH] == [LIVE]
    btc, eth = rig.runners[BTC], rig.runners[ETH]
    assert (btc.counters.gaps, btc.counters.resyncs, btc.connections) == (1, 1, 1)
    assert (eth.counters.gaps, eth.counters.resyncs, eth.connections) == (0, 0, 1)
    kinds = IncidentKind
    assert rig.kinds(BTC) == [kinds.CONNECT, kinds.LIVE, kinds.GAP, kinds.RESYNC, kinds.LIVE]
    assert rig.kinds(ETH) == [kinds.CONNECT, kinds.LIVE]
    assert rig.simulator.faults.dropped == 1
    await books_equal_simulator(rig, BOOKS, None)


async def test_malformed_frames_and_venue_errors_are_counted_and_harmless(rig: Rig) -> None:
    rig.simulator.send_malformed()
    rig.simulator.send_error()
    runners = rig.runners.values()
    await eventually(
        lambda: all(r.counters.malformed == 1 and r.counters.venue_errors == 1 for r in runners),
        "malformed frame and error counted on both connections",
    )
    await books_equal_simulator(rig, BOOKS, None)
    assert [r.connections for r in runners] == [1, 1]
    assert rig.seen.states[BTC] == rig.seen.states[ETH] == [LIVE]
    for name in rig.runners:
        errors = [i for i in rig.incidents[name] if i.kind is IncidentKind.ERROR]
        assert [(i.instrument, i.detail) for i in errors] == [
            (None, "Coinbase error: internal error")
        ]


@pytest.mark.parametrize("fault", ["disconnect", "silence"])
async def test_connection_faults_reconnect_and_resync_every_product(rig: Rig, fault: str) -> None:
    if fault == "disconnect":
        rig.simulator.disconnect_all()
    else:
        for runner in rig.runners.values():
            runner.adapter.silence_timeout = 0.3
        frames = [r.counters.frames for r in rig.runners.values()]
        await eventually(
            lambda: all(
                r.counters.frames > n + 1 for r, n in zip(rig.runners.values(), frames, strict=True)
            ),
            "the next receives use the new timeout",
        )
        rig.simulator.go_silent(1.0)
    await eventually(lambda: all(r.connections >= 2 for r in rig.runners.values()), "reconnected")
    await eventually(lambda: all(map(rig.registry.is_live, rig.runners)), "live again")
    for name, runner in rig.runners.items():
        kinds = rig.kinds(name)
        assert kinds.count(IncidentKind.CONNECT) == runner.connections
        assert kinds.count(IncidentKind.DISCONNECT) == runner.connections - 1
        if fault == "disconnect":
            assert rig.seen.states[name] == [LIVE, STALE, LIVE]
            assert (runner.connections, runner.counters.gaps) == (2, 0)
        else:
            # A silent venue may stay silent past a reconnect (one more cycle each time),
            # and a connection opened while it was silent lost its first messages: a gap
            # on that connection, and one more stale reason before the book is live again.
            states = rig.seen.states[name]
            assert states[0] == states[-1] == LIVE
            assert set(states[1:-1]) == {STALE}
            assert runner.counters.gaps <= runner.connections - 1
    await books_equal_simulator(rig, BOOKS, None)
