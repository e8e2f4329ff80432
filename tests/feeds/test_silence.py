"""A silent venue is stale within seconds (issue 15 item 7), with default settings.

The simulators' silence fault stops market data while the connection stays open and
control requests (pings) are answered: each busy book is stale once it has been silent
for its learned threshold (or, where the venue's heartbeats stop too, its connection
is). A connection through which nothing at all comes (no data, no pong) is stale at
the venue's silence timeout and replaced.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from app.venues import simulated_venues
from book.instruments import symbol_of
from book.registry import BookRegistry
from book.status import InstrumentState
from feeds.binance.adapter import BinanceAdapter
from feeds.runner import FeedRunner
from feeds.simulator.binance import BinanceSimulator
from feeds.simulator.faults import Fault
from feeds.symbols import SymbolMap
from tests.feeds import rig as rig_module
from tests.feeds.venues import build_simulator, running_venue
from tests.tcpproxy import ProxyState, TcpProxy
from tests.waiting import eventually

SILENCE_SECONDS = 8.0
SYMBOLS = {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT", "SOL-USDT": "SOLUSDT"}
BINANCE = tuple(f"binance:{name}" for name in SYMBOLS)


def silent_venues() -> list[str]:
    return [v for v in simulated_venues() if Fault.SILENCE in build_simulator(v).supported_faults]


async def learned(runners: Sequence[FeedRunner]) -> None:
    """Wait until each runner learned the usual rate of each of its books (busy books:
    a threshold of the 3 s floor)."""
    await eventually(
        lambda: all(r.silence_threshold(n) == 3.0 for r in runners for n in r.instruments),
        "rates learned",
    )


@pytest.mark.parametrize("venue", silent_venues())
async def test_every_book_of_a_silent_venue_is_stale_while_it_is_silent(venue: str) -> None:
    async with running_venue(venue) as rig:
        names = rig.instruments
        await learned(rig.runners)
        silent_until = time.monotonic() + SILENCE_SECONDS  # the simulator's clock
        rig.simulator.go_silent(SILENCE_SECONDS)
        await eventually(
            lambda: all(InstrumentState.STALE in rig.seen.states[n] for n in names),
            "every book stale",
        )
        assert time.monotonic() < silent_until  # stale while the venue is still silent
        await eventually(lambda: time.monotonic() > silent_until, "silence over", limit=20)
        await eventually(lambda: all(map(rig.registry.is_live, names)), "live again")


def binance_adapter(simulator: BinanceSimulator) -> BinanceAdapter:
    return BinanceAdapter(
        SymbolMap("binance", SYMBOLS), ws_base=simulator.ws_url, rest_base=simulator.rest_url
    )


def stale_reasons(registry: BookRegistry) -> set[str]:
    return {s.reason for s in registry.statuses() if s.state is InstrumentState.STALE}


async def test_books_of_a_silent_venue_leave_the_nbbo_and_the_connection_is_kept() -> None:
    simulator = BinanceSimulator(updates_per_second=200, levels=30, seed=7)
    async with rig_module.running_rig(simulator, binance_adapter) as rig:
        await learned(rig.runners)
        rig.simulator.go_silent(SILENCE_SECONDS)
        await eventually(
            lambda: all(rig.seen.states[n][-1] is InstrumentState.STALE for n in BINANCE),
            "every book stale",
        )
        assert stale_reasons(rig.registry) == {"silent: no book message for 3s"}
        for name in BINANCE:
            nbbo = rig.registry.nbbo(symbol_of(name))
            assert nbbo is not None and (nbbo.bid, nbbo.ask) == (None, None)
        await eventually(lambda: all(map(rig.registry.is_live, BINANCE)), "live again", limit=20)
        assert rig.runner.connections == 1  # it answered pings all along


async def test_a_dead_connection_is_stale_at_its_silence_timeout_then_replaced() -> None:
    simulator = BinanceSimulator(updates_per_second=200, levels=30, seed=7)
    async with simulator, TcpProxy("127.0.0.1", simulator.port) as proxy:
        registry, seen = rig_module.observed_registry()
        adapter = BinanceAdapter(
            SymbolMap("binance", SYMBOLS),
            ws_base=f"ws://127.0.0.1:{proxy.port}",
            rest_base=simulator.rest_url,
        )
        runner = rig_module.feed_runner(adapter, registry, seen.incidents.append, capture_depth=10)
        async with rig_module.running([runner], registry, BINANCE):
            proxy.pause()  # nothing gets through: no data, no pong
            await eventually(
                lambda: all(seen.states[n][-1] is InstrumentState.STALE for n in BINANCE),
                "every book stale",
            )
            assert proxy.state is ProxyState.PAUSED
            assert stale_reasons(registry) == {
                "disconnected: SilentConnectionError: nothing heard for 4s"
            }
            proxy.restore()
            await eventually(lambda: all(map(registry.is_live, BINANCE)), "live again")
            assert runner.connections >= 2
