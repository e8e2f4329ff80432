"""What only Binance's runner does, against the simulated Binance venue over loopback.

Binance syncs a book from a REST snapshot bridged with buffered stream events: a
resync that no stream event can complete is retried; one instrument's silent stream
resyncs it alone. What every venue does is in ``tests/feeds/test_conformance.py``.
"""

from __future__ import annotations

from book.incidents import IncidentKind
from book.status import InstrumentState
from tests.feeds.rig import books_equal_simulator
from tests.feeds.venues import books, running_venue
from tests.waiting import eventually

BTC, ETH, SOL = "binance:BTC-USDT", "binance:ETH-USDT", "binance:SOL-USDT"


async def test_a_silent_instrument_is_resynced_alone() -> None:
    async with running_venue("binance", instrument_silence_timeout=0.4) as rig:
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
        await books_equal_simulator(rig, books(rig), None)


async def test_a_resync_that_never_completes_is_retried() -> None:
    async with running_venue("binance", resync_timeout=0.5) as rig:
        rig.simulator.drop_next("BTCUSDT")
        await eventually(lambda: InstrumentState.STALE in rig.seen.states[BTC], "BTC stale")
        requests = rig.simulator.snapshot_requests("BTCUSDT")
        rig.simulator.mute("BTCUSDT", 2.5)  # no stream event can prove the new snapshot
        await eventually(
            lambda: rig.simulator.snapshot_requests("BTCUSDT") >= requests + 3, "resync retried"
        )
        await eventually(lambda: rig.registry.is_live(BTC), "BTC live once it streams again")
        assert rig.seen.states[ETH] == [InstrumentState.LIVE]
        await books_equal_simulator(rig, books(rig), None)
