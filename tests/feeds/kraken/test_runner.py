"""What only Kraken's runner does, against the simulated Kraken v2 venue over loopback.

Kraken rejects a pair it does not list with an error naming it (an error of that
instrument only), and states each pair's precision on its ``instrument`` channel, which
its checksums need. What every venue does is in ``tests/feeds/test_conformance.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from book.incidents import IncidentKind
from feeds.kraken.adapter import KrakenAdapter
from feeds.kraken.checksum import Precision
from feeds.simulator.kraken import DEFAULT_SYMBOLS, KrakenSimulator
from feeds.simulator.market import SimSymbol
from feeds.symbols import SymbolMap
from tests.feeds import rig as rig_module
from tests.feeds.rig import books_equal_simulator
from tests.feeds.venues import books
from tests.waiting import eventually

SYMBOLS = {"BTC-USD": "BTC/USD", "ETH-USD": "ETH/USD", "SOL-USD": "SOL/USD"}
ETH = "kraken:ETH-USD"
Rig = rig_module.Rig[KrakenSimulator, KrakenAdapter]


def running_rig(
    *,
    symbols: Mapping[str, str] = SYMBOLS,
    sim_symbols: Sequence[SimSymbol] = DEFAULT_SYMBOLS,
    live: Sequence[str] | None = None,
    **adapter_settings: Any,
) -> contextlib.AbstractAsyncContextManager[Rig]:
    """Simulator + runner over loopback, the ``live`` books (default: all) live."""
    return rig_module.running_rig(
        KrakenSimulator(symbols=sim_symbols, updates_per_second=200, levels=30, seed=7),
        lambda simulator: KrakenAdapter(
            SymbolMap("kraken", symbols), ws_url=simulator.v2_url, **adapter_settings
        ),
        live,
    )


async def test_a_pair_the_venue_rejects_is_an_error_of_that_instrument_only() -> None:
    symbols = {**SYMBOLS, "XRP-USD": "XRP/USD"}
    live = [f"kraken:{name}" for name in SYMBOLS]
    async with running_rig(symbols=symbols, live=live) as rig:
        await eventually(lambda: rig.runner.counters.venue_errors == 1, "rejection counted")
        (error,) = [i for i in rig.seen.incidents if i.kind is IncidentKind.ERROR]
        assert (error.instrument, error.detail) == (
            "kraken:XRP-USD",
            "Kraken subscribe failed: Currency pair not supported (XRP/USD)",
        )
        assert not rig.registry.is_live("kraken:XRP-USD")
        await books_equal_simulator(rig, books(rig), 10)


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
    async with running_rig(
        symbols=symbols,
        sim_symbols=(DEFAULT_SYMBOLS[0], xrp),
        precisions={"BTC-USD": Precision(price=2, qty=8)},
    ) as rig:
        assert rig.adapter.precisions.get("kraken:BTC-USD") == Precision(1, 8)
        assert rig.adapter.precisions.get("kraken:XRP-USD") == Precision(5, 8)
        await books_equal_simulator(rig, books(rig), 10)
        assert rig.runner.counters.checksum_failures == 0


async def test_without_the_instrument_channel_configured_precision_is_used() -> None:
    async with running_rig(learn_precision=False) as rig:
        await books_equal_simulator(rig, books(rig), 10)
        assert rig.runner.counters.checksum_failures == 0
        assert rig.adapter.precisions.get(ETH) == Precision(2, 8)
