"""What only OKX's runner meets, against the simulated OKX venue over loopback.

OKX sends checksum 0 since 2026 (the seqId chain alone finds a lost message), and may
pad numbers ("8476.980"): checksums are computed over the exchange's own strings. What
every venue does is in ``tests/feeds/test_conformance.py``.
"""

from __future__ import annotations

from book.status import InstrumentState
from tests.feeds.rig import books_equal_simulator
from tests.feeds.venues import books, running_venue
from tests.waiting import eventually

BTC, ETH, SWAP = "okx:BTC-USDT", "okx:ETH-USDT", "okx:BTC-USDT-PERP"
LIVE, STALE = InstrumentState.LIVE, InstrumentState.STALE


async def test_checksum_zero_like_okx_in_2026_relies_on_the_seq_chain() -> None:
    async with running_venue("okx", {"checksums": False}) as rig:
        rig.simulator.drop_next("BTC-USDT-SWAP")
        await eventually(lambda: rig.seen.states[SWAP] == [LIVE, STALE, LIVE], "SWAP resynced")
        await books_equal_simulator(rig, books(rig), None)
        assert rig.verified() == {BTC: 0, ETH: 0, SWAP: 0}
        assert rig.runner.counters.gaps == 1
        assert rig.seen.states[BTC] == rig.seen.states[ETH] == [LIVE]


async def test_padded_numbers_verify_against_the_exchange_strings() -> None:
    async with running_venue("okx", {"padded_numbers": True}) as rig:
        await eventually(lambda: min(rig.verified().values()) > 5, "checksums verified")
        await books_equal_simulator(rig, books(rig), None)
        assert rig.runner.counters.checksum_failures == 0
