"""The feed runner against the simulated Bybit v5 venue over real loopback sockets.

Bybit's ``u`` is per topic, so both instruments share one connection and a lost message
resyncs (unsubscribes and subscribes again) only the topic that lost it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from book.registry import BookRegistry
from book.status import InstrumentState
from feeds.backoff import Backoff
from feeds.bybit.adapter import BybitAdapter, BybitCategory
from feeds.incidents import IncidentKind
from feeds.runner import FeedRunner
from feeds.simulator.bybit import BybitSimulator
from feeds.simulator.faults import FaultCounters
from feeds.symbols import SymbolMap
from tests.feeds.rig import Observed
from tests.waiting import eventually

NATIVE = ("BTCUSDT", "ETHUSDT")
VENUES = {
    BybitCategory.SPOT: ("bybit", {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"}),
    BybitCategory.LINEAR: (
        "bybit-linear",
        {"BTC-USDT-PERP": "BTCUSDT", "ETH-USDT-PERP": "ETHUSDT"},
    ),
}
DEPTH = 50
LIVE, STALE = InstrumentState.LIVE, InstrumentState.STALE


@dataclass
class Rig:
    simulator: BybitSimulator
    runner: FeedRunner
    registry: BookRegistry
    seen: Observed
    btc: str
    eth: str

    def names(self) -> tuple[str, str]:
        return self.btc, self.eth


@contextlib.asynccontextmanager
async def running_rig(
    category: BybitCategory = BybitCategory.SPOT, *, snapshot_every: int = 0
) -> AsyncIterator[Rig]:
    venue, canonical = VENUES[category]
    async with BybitSimulator(
        category=category,
        updates_per_second=200,
        levels=80,
        seed=7,
        snapshot_every=snapshot_every,
    ) as simulator:
        registry = BookRegistry()
        seen = Observed()
        registry.on_status(seen.on_status)
        registry.on_snapshot(seen.on_snapshot)
        symbols = SymbolMap(venue, canonical)
        adapter = BybitAdapter(symbols, category=category, ws_base=simulator.ws_url)
        runner = FeedRunner(
            adapter,
            registry=registry,
            capture_depth=DEPTH,
            on_incident=seen.incidents.append,
            backoff=Backoff(initial=0.01, maximum=0.05),
        )
        btc, eth = symbols.instruments()
        task = asyncio.create_task(runner.run())
        try:
            await eventually(lambda: registry.is_live(btc) and registry.is_live(eth), "all live")
            yield Rig(simulator, runner, registry, seen, btc, eth)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with running_rig() as running:
        yield running


async def books_equal_simulator(rig: Rig) -> None:
    """Pause the market and wait until every book equals the venue's true top 50."""
    rig.simulator.pause()

    def matches() -> bool:
        for name, native in zip(rig.names(), NATIVE, strict=True):
            snap = rig.registry.get(name)
            truth = rig.simulator.book(native, DEPTH)
            if snap is None or (snap.bids, snap.asks) != (truth.bids, truth.asks):
                return False
        return True

    await eventually(matches, "books equal the simulator's")


@pytest.mark.parametrize("category", list(BybitCategory))
async def test_books_sync_and_equal_the_venue(category: BybitCategory) -> None:
    async with running_rig(category) as rig:
        await books_equal_simulator(rig)
        assert rig.runner.counters.gaps == 0
        assert rig.seen.kinds() == [IncidentKind.CONNECT] + [IncidentKind.LIVE] * 2
        assert [rig.simulator.subscribers(f"orderbook.50.{n}") for n in NATIVE] == [1, 1]


async def test_a_lost_message_resyncs_only_that_topic(rig: Rig) -> None:
    rig.simulator.drop_next("BTCUSDT")
    await eventually(lambda: STALE in rig.seen.states[rig.btc], "BTC stale")
    eth_before = rig.seen.published[rig.eth]
    await eventually(lambda: rig.registry.is_live(rig.btc), "BTC live again")
    await eventually(lambda: rig.seen.published[rig.eth] > eth_before + 3, "ETH keeps streaming")
    assert rig.seen.states[rig.btc] == [LIVE, STALE, LIVE]
    assert rig.seen.states[rig.eth] == [LIVE]
    assert (rig.runner.counters.gaps, rig.runner.counters.resyncs) == (1, 1)
    assert rig.runner.connections == 1
    kinds = IncidentKind
    assert rig.seen.kinds(rig.btc) == [kinds.LIVE, kinds.GAP, kinds.RESYNC, kinds.LIVE]
    assert rig.seen.kinds(rig.eth) == [kinds.LIVE]
    assert rig.simulator.faults.dropped == 1
    await books_equal_simulator(rig)


async def test_a_service_restart_u_1_overwrites_the_book_without_a_resync(rig: Rig) -> None:
    before = rig.simulator.update_id("orderbook.50.BTCUSDT")
    rig.simulator.restart("BTCUSDT")
    await eventually(lambda: rig.simulator.faults.restarts == 1, "restart sent")
    await books_equal_simulator(rig)
    assert 1 <= rig.simulator.update_id("orderbook.50.BTCUSDT") < before
    assert rig.seen.states[rig.btc] == rig.seen.states[rig.eth] == [LIVE]
    assert (rig.runner.counters.gaps, rig.runner.counters.resyncs) == (0, 0)


async def test_unsolicited_snapshots_replace_the_book_without_a_resync() -> None:
    async with running_rig(snapshot_every=10) as rig:
        await eventually(lambda: rig.simulator.faults.unsolicited_snapshots >= 3, "snapshots")
        await books_equal_simulator(rig)
        assert rig.seen.states[rig.btc] == rig.seen.states[rig.eth] == [LIVE]
        assert (rig.runner.counters.gaps, rig.runner.counters.resyncs) == (0, 0)


async def test_malformed_frames_and_venue_errors_are_counted_and_harmless(rig: Rig) -> None:
    rig.simulator.send_malformed()
    rig.simulator.send_error()
    counters = rig.runner.counters
    await eventually(lambda: counters.malformed == 1 and counters.venue_errors == 1, "both counted")
    await books_equal_simulator(rig)
    assert rig.runner.connections == 1
    assert rig.seen.states[rig.btc] == rig.seen.states[rig.eth] == [LIVE]
    errors = [i for i in rig.seen.incidents if i.kind is IncidentKind.ERROR]
    assert [(i.instrument, i.detail) for i in errors] == [
        (None, "Bybit subscribe failed: error:internal server error")
    ]
    assert rig.simulator.faults == FaultCounters(malformed=1, errors=1)


@pytest.mark.parametrize("fault", ["disconnect", "silence"])
async def test_connection_faults_reconnect_and_resync_every_book(rig: Rig, fault: str) -> None:
    if fault == "disconnect":
        rig.simulator.disconnect_all()
    else:
        rig.runner.adapter.silence_timeout = 0.3
        frames = rig.runner.counters.frames  # the next receive uses the new timeout
        await eventually(lambda: rig.runner.counters.frames > frames + 1, "frames flow")
        rig.simulator.go_silent(1.0)
    await eventually(lambda: rig.runner.connections >= 2, "reconnected")
    rig.runner.adapter.silence_timeout = 30.0  # the paused market below sends nothing
    await eventually(
        lambda: all(rig.seen.states[n] == [LIVE, STALE, LIVE] for n in rig.names()),
        "stale then live again",
    )
    kinds = rig.seen.kinds(None)
    assert kinds.count(IncidentKind.CONNECT) == rig.runner.connections
    assert kinds.count(IncidentKind.DISCONNECT) == rig.runner.connections - 1
    # A silent venue may stay silent past the first reconnect: one more cycle each time.
    assert rig.runner.connections == 2 or fault == "silence"
    assert rig.runner.counters.gaps == 0
    await books_equal_simulator(rig)
