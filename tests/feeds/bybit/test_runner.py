"""What only Bybit's runner meets, against the simulated Bybit v5 venue over loopback.

Bybit may push a snapshot of a topic at any time: it replaces the book, it is no
fault. What every venue does is in ``tests/feeds/test_conformance.py``.
"""

from __future__ import annotations

from book.status import InstrumentState
from tests.feeds.rig import books_equal_simulator
from tests.feeds.venues import EXPECTED, books, running_venue
from tests.waiting import eventually


async def test_unsolicited_snapshots_replace_the_book_without_a_resync() -> None:
    async with running_venue("bybit", {"snapshot_every": 10}) as rig:
        await eventually(lambda: rig.simulator.faults.unsolicited_snapshots >= 3, "snapshots")
        await books_equal_simulator(rig, books(rig), EXPECTED["bybit"].depth)
        assert all(rig.seen.states[n] == [InstrumentState.LIVE] for n in rig.instruments)
        assert (rig.runner.counters.gaps, rig.runner.counters.resyncs) == (0, 0)
