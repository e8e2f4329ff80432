"""The feed runner against the simulated Kraken v2 venue over real loopback sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from book.incidents import IncidentKind
from book.status import InstrumentState
from feeds.kraken.adapter import KrakenAdapter
from feeds.kraken.checksum import Precision
from feeds.simulator.kraken import DEFAULT_SYMBOLS, KrakenSimulator
from feeds.simulator.market import SimSymbol
from feeds.symbols import SymbolMap
from tests.feeds import rig as rig_module
from tests.feeds.rig import books_equal_simulator, silence_venue
from tests.waiting import eventually

SYMBOLS = {"BTC-USD": "BTC/USD", "ETH-USD": "ETH/USD", "SOL-USD": "SOL/USD"}
BTC, ETH, SOL = (f"kraken:{name}" for name in SYMBOLS)
ALL = (BTC, ETH, SOL)
LIVE, STALE = InstrumentState.LIVE, InstrumentState.STALE
BOOKS = {f"kraken:{name}": pair for name, pair in SYMBOLS.items()}
Rig = rig_module.Rig[KrakenSimulator, KrakenAdapter]


def running_rig(
    *,
    symbols: Mapping[str, str] = SYMBOLS,
    sim_symbols: Sequence[SimSymbol] = DEFAULT_SYMBOLS,
    live: Sequence[str] = ALL,
    **adapter_settings: Any,
) -> contextlib.AbstractAsyncContextManager[Rig]:
    """Simulator + runner over loopback, the ``live`` books live."""
    return rig_module.running_rig(
        KrakenSimulator(symbols=sim_symbols, updates_per_second=200, levels=30, seed=7),
        lambda simulator: KrakenAdapter(
            SymbolMap("kraken", symbols), ws_url=simulator.v2_url, **adapter_settings
        ),
        live,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with running_rig() as started:
        yield started


async def test_books_sync_verify_every_checksum_and_equal_the_venue(rig: Rig) -> None:
    await eventually(lambda: all(rig.verified()[name] > 20 for name in ALL), "checksums verified")
    await books_equal_simulator(rig, BOOKS, 10)
    counters = rig.runner.counters
    assert (counters.checksum_failures, counters.malformed, counters.venue_errors) == (0, 0, 0)
    assert rig.seen.kinds() == [IncidentKind.CONNECT] + [IncidentKind.LIVE] * 3
    # Every published book was one verified message (snapshots included).
    assert all(rig.verified()[name] == rig.seen.published[name] for name in ALL)
    assert [rig.simulator.snapshots_sent(s) for s in SYMBOLS.values()] == [1, 1, 1]


@pytest.mark.parametrize("fault", ["drop", "checksum"])
async def test_a_bad_checksum_resyncs_only_that_instrument_while_the_others_stream(
    rig: Rig, fault: str
) -> None:
    simulator = rig.simulator
    simulator.hold_snapshots("BTC/USD")  # BTC's new snapshot waits until released
    if fault == "drop":
        simulator.drop_next("BTC/USD")
    else:
        simulator.corrupt_next_checksum("BTC/USD")
    await eventually(lambda: STALE in rig.seen.states[BTC], "BTC stale")
    await eventually(lambda: simulator.unsubscribes("BTC/USD") == 1, "BTC unsubscribed")
    during = dict(rig.seen.published)
    await eventually(
        lambda: all(rig.seen.published[n] > during[n] + 5 for n in (ETH, SOL)),
        "ETH and SOL stream during BTC's resync",
    )
    assert not rig.registry.is_live(BTC)
    assert rig.seen.published[BTC] == during[BTC]
    simulator.release_snapshots("BTC/USD")
    await eventually(lambda: rig.registry.is_live(BTC), "BTC live again")
    assert rig.seen.states[BTC] == [LIVE, STALE, LIVE]
    assert rig.seen.states[ETH] == [LIVE]
    assert rig.seen.states[SOL] == [LIVE]
    assert rig.seen.kinds(BTC) == [
        IncidentKind.LIVE,
        IncidentKind.CHECKSUM,
        IncidentKind.RESYNC,
        IncidentKind.LIVE,
    ]
    assert [simulator.snapshots_sent(s) for s in SYMBOLS.values()] == [2, 1, 1]
    assert [simulator.unsubscribes(s) for s in SYMBOLS.values()] == [1, 0, 0]
    faults = simulator.faults
    if fault == "drop":
        assert faults.dropped >= 1 and faults.corrupted_checksums == 0
    else:
        assert (faults.dropped, faults.corrupted_checksums) == (0, 1)
    assert rig.runner.counters.checksum_failures == 1
    assert rig.runner.connections == 1
    await books_equal_simulator(rig, BOOKS, 10)


async def test_a_malformed_frame_is_counted_and_harmless(rig: Rig) -> None:
    rig.simulator.send_malformed()
    await eventually(lambda: rig.runner.counters.malformed == 1, "malformed frame counted")
    await books_equal_simulator(rig, BOOKS, 10)
    assert rig.runner.connections == 1
    assert all(rig.seen.states[name] == [LIVE] for name in ALL)


async def test_an_exchange_error_is_reported_and_harmless(rig: Rig) -> None:
    rig.simulator.send_error("EGeneral:Internal error")
    await eventually(lambda: rig.runner.counters.venue_errors == 1, "error counted")
    (error,) = [i for i in rig.seen.incidents if i.kind is IncidentKind.ERROR]
    assert (error.instrument, error.detail) == (
        None,
        "Kraken request failed: EGeneral:Internal error",
    )
    await books_equal_simulator(rig, BOOKS, 10)
    assert rig.runner.connections == 1
    assert all(rig.seen.states[name] == [LIVE] for name in ALL)


async def test_a_pair_the_venue_rejects_is_an_error_of_that_instrument_only() -> None:
    symbols = {**SYMBOLS, "XRP-USD": "XRP/USD"}
    async with running_rig(symbols=symbols) as rig:
        await eventually(lambda: rig.runner.counters.venue_errors == 1, "rejection counted")
        (error,) = [i for i in rig.seen.incidents if i.kind is IncidentKind.ERROR]
        assert (error.instrument, error.detail) == (
            "kraken:XRP-USD",
            "Kraken subscribe failed: Currency pair not supported (XRP/USD)",
        )
        assert not rig.registry.is_live("kraken:XRP-USD")
        await books_equal_simulator(rig, BOOKS, 10)


async def test_a_disconnect_reconnects_and_resyncs_every_book(rig: Rig) -> None:
    rig.simulator.disconnect_all()
    await eventually(lambda: rig.runner.connections == 2, "reconnected")
    await eventually(
        lambda: all(rig.seen.states[n] == [LIVE, STALE, LIVE] for n in ALL),
        "stale then live again",
    )
    kinds = rig.seen.kinds(None)
    assert (kinds.count(IncidentKind.CONNECT), kinds.count(IncidentKind.DISCONNECT)) == (2, 1)
    assert rig.simulator.connections_accepted == 2
    assert rig.simulator.faults.disconnected == 1
    await books_equal_simulator(rig, BOOKS, 10)


async def test_a_silent_venue_is_left_and_every_book_resyncs(rig: Rig) -> None:
    await silence_venue(rig)
    await eventually(lambda: rig.runner.connections >= 2, "reconnected")
    # While it stays silent each new connection gets its snapshots, then nothing: it is
    # left again. After the silence every book must end up live again.
    await eventually(lambda: not rig.simulator.silent, "silence over")
    await eventually(lambda: all(rig.registry.is_live(n) for n in ALL), "all live again")
    for name in ALL:
        states = rig.seen.states[name]
        assert states[:2] == [LIVE, STALE]
        assert states == [LIVE, STALE] * (len(states) // 2) + [LIVE]
    kinds = rig.seen.kinds(None)
    assert kinds.count(IncidentKind.CONNECT) == rig.runner.connections
    assert kinds.count(IncidentKind.DISCONNECT) == rig.runner.connections - 1
    await books_equal_simulator(rig, BOOKS, 10)


async def test_precision_comes_from_the_instrument_channel() -> None:
    """A pair with no configured precision, and one configured wrong: the venue's
    ``instrument`` snapshot states both, and both books verify and go live."""
    xrp = SimSymbol(
        "XRP/USD",
        price="0.52000",
        tick="0.00001",
        lot="0.00000001",
        mean_qty="5000",
        price_decimals=5,
        qty_decimals=8,
    )
    symbols = {"BTC-USD": "BTC/USD", "XRP-USD": "XRP/USD"}
    live = ("kraken:BTC-USD", "kraken:XRP-USD")
    async with running_rig(
        symbols=symbols,
        sim_symbols=(DEFAULT_SYMBOLS[0], xrp),
        live=live,
        precisions={"BTC-USD": Precision(price=2, qty=8)},
    ) as rig:
        assert rig.adapter.precisions.get("kraken:BTC-USD") == Precision(1, 8)
        assert rig.adapter.precisions.get("kraken:XRP-USD") == Precision(5, 8)
        await books_equal_simulator(
            rig, {f"kraken:{name}": pair for name, pair in symbols.items()}, 10
        )
        assert rig.runner.counters.checksum_failures == 0


async def test_without_the_instrument_channel_configured_precision_is_used() -> None:
    async with running_rig(learn_precision=False) as rig:
        await books_equal_simulator(rig, BOOKS, 10)
        assert rig.runner.counters.checksum_failures == 0
        assert rig.adapter.precisions.get(ETH) == Precision(2, 8)


async def test_application_pings_are_answered() -> None:
    async with running_rig(ping_interval=0.02) as rig:
        await eventually(lambda: rig.simulator.pongs_sent >= 3, "pongs")
        assert rig.runner.connections == 1
