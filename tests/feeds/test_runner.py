"""The feed runner against the simulated Binance venue over real loopback sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from book.incidents import IncidentKind
from book.status import InstrumentState
from feeds.binance.adapter import BinanceAdapter
from feeds.simulator.binance import BinanceSimulator
from feeds.symbols import SymbolMap
from tests.feeds import rig as rig_module
from tests.feeds.rig import books_equal_simulator, silence_venue
from tests.waiting import eventually

SYMBOLS = {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT", "SOL-USDT": "SOLUSDT"}
BTC, ETH, SOL = (f"binance:{name}" for name in SYMBOLS)
BOOKS = {f"binance:{name}": native for name, native in SYMBOLS.items()}
Rig = rig_module.Rig[BinanceSimulator, BinanceAdapter]


def running_rig(
    *, futures: bool = False, **adapter_settings: float
) -> contextlib.AbstractAsyncContextManager[Rig]:
    """Simulator + runner over loopback, every book live; ``futures`` for USD-M;
    ``adapter_settings`` override the adapter's class attributes (timeouts, connection
    age) before the runner starts."""
    return rig_module.running_rig(
        BinanceSimulator(futures=futures, updates_per_second=200, levels=30, seed=7),
        lambda simulator: BinanceAdapter(
            SymbolMap("binance", SYMBOLS),
            futures=futures,
            ws_base=simulator.ws_url,
            rest_base=simulator.rest_url,
        ),
        (BTC, ETH, SOL),
        **adapter_settings,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with running_rig() as started:
        yield started


async def test_books_sync_and_equal_the_venue(rig: Rig) -> None:
    await books_equal_simulator(rig, BOOKS, 10)
    assert rig.runner.counters.gaps == 0
    assert rig.seen.kinds() == [IncidentKind.CONNECT] + [IncidentKind.LIVE] * 3


async def test_a_gap_resyncs_only_that_instrument(rig: Rig) -> None:
    eth_snapshots = rig.simulator.snapshot_requests("ETHUSDT")
    rig.simulator.drop_next("BTCUSDT")
    await eventually(lambda: InstrumentState.STALE in rig.seen.states[BTC], "BTC stale")
    eth_before = rig.seen.published[ETH]
    await eventually(lambda: rig.registry.is_live(BTC), "BTC live again")
    await eventually(lambda: rig.seen.published[ETH] > eth_before + 3, "ETH keeps streaming")
    live, stale = InstrumentState.LIVE, InstrumentState.STALE
    assert rig.seen.states[BTC] == [live, stale, live]
    assert rig.seen.states[ETH] == [InstrumentState.LIVE]
    assert rig.seen.states[SOL] == [InstrumentState.LIVE]
    assert rig.simulator.snapshot_requests("ETHUSDT") == eth_snapshots
    assert rig.runner.counters.gaps == 1
    assert rig.runner.connections == 1
    kinds = IncidentKind
    assert rig.seen.kinds(BTC) == [kinds.LIVE, kinds.GAP, kinds.RESYNC, kinds.LIVE]
    await books_equal_simulator(rig, BOOKS, 10)


async def test_a_malformed_frame_is_counted_and_harmless(rig: Rig) -> None:
    rig.simulator.send_malformed()
    await eventually(lambda: rig.runner.counters.malformed == 1, "malformed frame counted")
    await books_equal_simulator(rig, BOOKS, 10)
    assert rig.runner.connections == 1
    assert all(rig.seen.states[name] == [InstrumentState.LIVE] for name in (BTC, ETH, SOL))


@pytest.mark.parametrize("fault", ["disconnect", "server_shutdown", "silence"])
async def test_connection_faults_reconnect_and_resync_every_book(rig: Rig, fault: str) -> None:
    if fault == "disconnect":
        rig.simulator.disconnect_all()
    elif fault == "server_shutdown":
        rig.simulator.send_server_shutdown()
    else:
        await silence_venue(rig)
    await eventually(lambda: rig.runner.connections >= 2, "reconnected")
    await eventually(
        lambda: (
            all(rig.seen.states[n][-1] is InstrumentState.LIVE for n in (BTC, ETH, SOL))
            and all(len(rig.seen.states[n]) == 3 for n in (BTC, ETH, SOL))
        ),
        "stale then live again",
    )
    for name in (BTC, ETH, SOL):
        assert rig.seen.states[name] == [
            InstrumentState.LIVE,
            InstrumentState.STALE,
            InstrumentState.LIVE,
        ]
    # A silent venue may stay silent past the first reconnect: one more cycle each time.
    kinds = rig.seen.kinds(None)
    assert kinds.count(IncidentKind.CONNECT) == rig.runner.connections
    assert kinds.count(IncidentKind.DISCONNECT) == rig.runner.connections - 1
    assert rig.runner.connections == 2 or fault == "silence"
    await books_equal_simulator(rig, BOOKS, 10)


async def test_connection_rotation_is_make_before_break() -> None:
    async with running_rig(max_connection_age=0.5) as rig:
        await eventually(lambda: rig.runner.rotations >= 2, "rotated twice")
        before = dict(rig.seen.published)
        await eventually(
            lambda: all(rig.seen.published[n] > before[n] + 3 for n in (BTC, ETH, SOL)),
            "updates continue after rotating",
        )
        await books_equal_simulator(rig, BOOKS, 10)
        for name in (BTC, ETH, SOL):
            assert rig.seen.states[name] == [InstrumentState.LIVE]  # never stale
            seqs = rig.seen.seqs[name]
            assert seqs == sorted(set(seqs))  # strictly increasing across connections
        assert IncidentKind.DISCONNECT not in rig.seen.kinds(None)
        assert rig.runner.connections >= rig.runner.rotations + 1


async def test_a_silent_instrument_is_resynced_alone() -> None:
    async with running_rig(instrument_silence_timeout=0.4) as rig:
        rig.simulator.mute("ETHUSDT", 1.5)
        await eventually(lambda: InstrumentState.STALE in rig.seen.states[ETH], "ETH stale")
        await eventually(lambda: rig.registry.is_live(ETH), "ETH live again")
        assert rig.seen.states[BTC] == [InstrumentState.LIVE]
        assert rig.seen.states[SOL] == [InstrumentState.LIVE]
        assert rig.runner.connections == 1
        stale = [
            i for i in rig.seen.incidents if i.instrument == ETH and i.kind is IncidentKind.STALE
        ]
        assert stale and "no book message" in stale[0].detail
        await books_equal_simulator(rig, BOOKS, 10)


async def test_a_resync_that_never_completes_is_retried() -> None:
    async with running_rig(resync_timeout=0.5) as rig:
        rig.simulator.drop_next("BTCUSDT")
        await eventually(lambda: InstrumentState.STALE in rig.seen.states[BTC], "BTC stale")
        requests = rig.simulator.snapshot_requests("BTCUSDT")
        rig.simulator.mute("BTCUSDT", 2.5)  # no stream event can prove the new snapshot
        await eventually(
            lambda: rig.simulator.snapshot_requests("BTCUSDT") >= requests + 3, "resync retried"
        )
        await eventually(lambda: rig.registry.is_live(BTC), "BTC live once it streams again")
        assert rig.seen.states[ETH] == [InstrumentState.LIVE]
        await books_equal_simulator(rig, BOOKS, 10)
