"""The feed runner against the simulated Bybit v5 venue over real loopback sockets.

Bybit's ``u`` is per topic, so both instruments share one connection and a lost message
resyncs (unsubscribes and subscribes again) only the topic that lost it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from book.incidents import IncidentKind
from book.status import InstrumentState
from feeds.bybit.adapter import BybitAdapter, BybitCategory
from feeds.simulator.bybit import BybitSimulator
from feeds.simulator.faults import FaultCounters
from feeds.symbols import SymbolMap
from tests.feeds import rig as rig_module
from tests.feeds.rig import books_equal_simulator, silence_venue
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


Rig = rig_module.Rig[BybitSimulator, BybitAdapter]


def running_rig(
    category: BybitCategory = BybitCategory.SPOT, *, snapshot_every: int = 0
) -> contextlib.AbstractAsyncContextManager[Rig]:
    venue, canonical = VENUES[category]
    symbols = SymbolMap(venue, canonical)
    return rig_module.running_rig(
        BybitSimulator(
            category=category,
            updates_per_second=200,
            levels=80,
            seed=7,
            snapshot_every=snapshot_every,
        ),
        lambda simulator: BybitAdapter(symbols, category=category, ws_base=simulator.ws_url),
        symbols.instruments(),
        DEPTH,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with running_rig() as running:
        yield running


def books(rig: Rig) -> dict[str, str]:
    """The rig's instruments -> their Bybit symbols."""
    return dict(zip(rig.instruments, NATIVE, strict=True))


@pytest.mark.parametrize("category", list(BybitCategory))
async def test_books_sync_and_equal_the_venue(category: BybitCategory) -> None:
    async with running_rig(category) as rig:
        await books_equal_simulator(rig, books(rig), DEPTH)
        assert rig.runner.counters.gaps == 0
        assert rig.seen.kinds() == [IncidentKind.CONNECT] + [IncidentKind.LIVE] * 2
        assert [rig.simulator.subscribers(f"orderbook.50.{n}") for n in NATIVE] == [1, 1]


async def test_a_lost_message_resyncs_only_that_topic(rig: Rig) -> None:
    btc, eth = rig.instruments
    rig.simulator.drop_next("BTCUSDT")
    await eventually(lambda: STALE in rig.seen.states[btc], "BTC stale")
    eth_before = rig.seen.published[eth]
    await eventually(lambda: rig.registry.is_live(btc), "BTC live again")
    await eventually(lambda: rig.seen.published[eth] > eth_before + 3, "ETH keeps streaming")
    assert rig.seen.states[btc] == [LIVE, STALE, LIVE]
    assert rig.seen.states[eth] == [LIVE]
    assert (rig.runner.counters.gaps, rig.runner.counters.resyncs) == (1, 1)
    assert rig.runner.connections == 1
    kinds = IncidentKind
    assert rig.seen.kinds(btc) == [kinds.LIVE, kinds.GAP, kinds.RESYNC, kinds.LIVE]
    assert rig.seen.kinds(eth) == [kinds.LIVE]
    assert rig.simulator.faults.dropped == 1
    await books_equal_simulator(rig, books(rig), DEPTH)


async def test_a_service_restart_u_1_overwrites_the_book_without_a_resync(rig: Rig) -> None:
    btc, eth = rig.instruments
    before = rig.simulator.update_id("orderbook.50.BTCUSDT")
    rig.simulator.restart("BTCUSDT")
    await eventually(lambda: rig.simulator.faults.restarts == 1, "restart sent")
    await books_equal_simulator(rig, books(rig), DEPTH)
    assert 1 <= rig.simulator.update_id("orderbook.50.BTCUSDT") < before
    assert rig.seen.states[btc] == rig.seen.states[eth] == [LIVE]
    assert (rig.runner.counters.gaps, rig.runner.counters.resyncs) == (0, 0)


async def test_unsolicited_snapshots_replace_the_book_without_a_resync() -> None:
    async with running_rig(snapshot_every=10) as rig:
        btc, eth = rig.instruments
        await eventually(lambda: rig.simulator.faults.unsolicited_snapshots >= 3, "snapshots")
        await books_equal_simulator(rig, books(rig), DEPTH)
        assert rig.seen.states[btc] == rig.seen.states[eth] == [LIVE]
        assert (rig.runner.counters.gaps, rig.runner.counters.resyncs) == (0, 0)


async def test_malformed_frames_and_venue_errors_are_counted_and_harmless(rig: Rig) -> None:
    btc, eth = rig.instruments
    rig.simulator.send_malformed()
    rig.simulator.send_error()
    counters = rig.runner.counters
    await eventually(lambda: counters.malformed == 1 and counters.venue_errors == 1, "both counted")
    await books_equal_simulator(rig, books(rig), DEPTH)
    assert rig.runner.connections == 1
    assert rig.seen.states[btc] == rig.seen.states[eth] == [LIVE]
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
        await silence_venue(rig)
    await eventually(lambda: rig.runner.connections >= 2, "reconnected")
    rig.runner.adapter.silence_timeout = 30.0  # the paused market below sends nothing
    await eventually(
        lambda: all(rig.seen.states[n] == [LIVE, STALE, LIVE] for n in rig.instruments),
        "stale then live again",
    )
    kinds = rig.seen.kinds(None)
    assert kinds.count(IncidentKind.CONNECT) == rig.runner.connections
    assert kinds.count(IncidentKind.DISCONNECT) == rig.runner.connections - 1
    # A silent venue may stay silent past the first reconnect: one more cycle each time.
    assert rig.runner.connections == 2 or fault == "silence"
    assert rig.runner.counters.gaps == 0
    await books_equal_simulator(rig, books(rig), DEPTH)
