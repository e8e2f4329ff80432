"""The feed runner with the OKX handler against the simulated OKX venue over real loopback.

Three instruments on one connection (spot BTC and ETH, the BTC swap). A fault of one
instrument makes that instrument alone stale; it is resubscribed (a new snapshot) while
the others keep streaming; connection faults reconnect and resync every book.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from book.incidents import IncidentKind
from book.status import InstrumentState
from feeds.okx.adapter import OkxAdapter, okx_symbols
from feeds.simulator.okx import OkxSimulator
from feeds.symbols import SymbolMap
from tests.feeds import rig as rig_module
from tests.feeds.rig import books_equal_simulator, silence_venue
from tests.waiting import eventually

SYMBOLS = okx_symbols(["BTC-USDT", "ETH-USDT", "BTC-USDT-PERP"])
BTC, ETH, SWAP = (f"okx:{name}" for name in SYMBOLS)
ALL = (BTC, ETH, SWAP)
LIVE, STALE = InstrumentState.LIVE, InstrumentState.STALE
BOOKS = {f"okx:{name}": inst_id for name, inst_id in SYMBOLS.items()}
Rig = rig_module.Rig[OkxSimulator, OkxAdapter]


def running_rig(
    simulator_options: dict[str, Any] | None = None, **adapter_settings: float
) -> contextlib.AbstractAsyncContextManager[Rig]:
    """Simulator + runner over loopback, every book live; ``adapter_settings`` override
    the adapter's class attributes (timeouts, pings, connection age) before the start."""
    return rig_module.running_rig(
        OkxSimulator(
            updates_per_second=200,
            levels=30,
            seed=7,
            push_interval=0.02,
            **(simulator_options or {}),
        ),
        lambda simulator: OkxAdapter(SymbolMap("okx", SYMBOLS), ws_base=simulator.ws_url),
        ALL,
        **adapter_settings,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with running_rig() as started:
        yield started


async def test_books_sync_verify_checksums_and_equal_the_venue(rig: Rig) -> None:
    await eventually(lambda: min(rig.verified().values()) > 5, "checksums verified")
    await books_equal_simulator(rig, BOOKS, 10)
    counters = rig.runner.counters
    assert (counters.gaps, counters.checksum_failures, counters.resyncs) == (0, 0, 0)
    assert rig.seen.kinds() == [IncidentKind.CONNECT] + [IncidentKind.LIVE] * 3
    assert all(rig.simulator.snapshots_sent(inst_id) == 1 for inst_id in SYMBOLS.values())
    assert rig.runner.connections == 1


@pytest.mark.parametrize(
    ("fault", "incident"), [("drop", IncidentKind.GAP), ("checksum", IncidentKind.CHECKSUM)]
)
async def test_a_bad_update_resubscribes_only_that_instrument(
    rig: Rig, fault: str, incident: IncidentKind
) -> None:
    if fault == "drop":
        rig.simulator.drop_next("BTC-USDT")
    else:
        rig.simulator.corrupt_next_checksum("BTC-USDT")
    await eventually(lambda: STALE in rig.seen.states[BTC], "BTC stale")
    await eventually(lambda: rig.registry.is_live(BTC), "BTC live again")
    eth_after, swap_after = rig.seen.published[ETH], rig.seen.published[SWAP]
    await eventually(
        lambda: rig.seen.published[ETH] > eth_after + 3 and rig.seen.published[SWAP] > swap_after,
        "the others keep streaming",
    )
    assert rig.seen.books_while_stale(BTC, ETH) >= 1
    assert rig.seen.books_while_stale(BTC, SWAP) >= 1
    assert rig.seen.states == {BTC: [LIVE, STALE, LIVE], ETH: [LIVE], SWAP: [LIVE]}
    assert rig.seen.kinds(BTC) == [
        IncidentKind.LIVE,
        incident,
        IncidentKind.RESYNC,
        IncidentKind.LIVE,
    ]
    assert rig.seen.kinds(ETH) == rig.seen.kinds(SWAP) == [IncidentKind.LIVE]
    snapshots = {inst_id: rig.simulator.snapshots_sent(inst_id) for inst_id in SYMBOLS.values()}
    assert snapshots == {"BTC-USDT": 2, "ETH-USDT": 1, "BTC-USDT-SWAP": 1}
    counters = rig.runner.counters
    assert (counters.gaps, counters.checksum_failures, counters.resyncs) == (
        (1, 0, 1) if fault == "drop" else (0, 1, 1)
    )
    assert rig.runner.connections == 1
    btc_seqs = rig.seen.seqs[BTC]
    assert btc_seqs == sorted(set(btc_seqs))  # the book's version keeps growing
    await books_equal_simulator(rig, BOOKS, 10)


async def test_a_sequence_reset_is_followed_without_a_resync(rig: Rig) -> None:
    rig.simulator.reset_sequence("ETH-USDT")
    await eventually(lambda: rig.simulator.seq_id("ETH-USDT") < 1_000, "ETH seqIds restarted")
    published = rig.seen.published[ETH]
    await eventually(lambda: rig.seen.published[ETH] > published + 3, "ETH keeps streaming")
    await books_equal_simulator(rig, BOOKS, 10)
    assert rig.simulator.faults.restarts == 1
    assert rig.runner.counters.resyncs == 0
    assert all(rig.seen.states[name] == [LIVE] for name in ALL)


async def test_malformed_frames_and_error_events_are_counted_and_harmless(rig: Rig) -> None:
    rig.simulator.send_malformed()
    rig.simulator.send_error()
    await eventually(lambda: rig.runner.counters.venue_errors == 1, "error counted")
    assert rig.runner.counters.malformed == 1
    errors = [i for i in rig.seen.incidents if i.kind is IncidentKind.ERROR]
    assert [(i.instrument, i.detail) for i in errors] == [
        (None, "OKX error 60012: Invalid request")
    ]
    await books_equal_simulator(rig, BOOKS, 10)
    assert rig.runner.connections == 1
    assert all(rig.seen.states[name] == [LIVE] for name in ALL)


@pytest.mark.parametrize("fault", ["disconnect", "notice", "silence"])
async def test_connection_faults_reconnect_and_resync_every_book(rig: Rig, fault: str) -> None:
    if fault == "disconnect":
        rig.simulator.disconnect_all()
    elif fault == "notice":
        rig.simulator.send_notice()
    else:
        await silence_venue(rig)
    await eventually(lambda: rig.runner.connections >= 2, "reconnected")
    await eventually(
        lambda: all(rig.seen.states[n] == [LIVE, STALE, LIVE] for n in ALL),
        "stale then live again",
    )
    kinds = rig.seen.kinds(None)
    assert kinds.count(IncidentKind.CONNECT) == rig.runner.connections
    assert kinds.count(IncidentKind.DISCONNECT) == rig.runner.connections - 1
    # A silent venue may stay silent past the first reconnect: one more cycle each time.
    assert rig.runner.connections == 2 or fault == "silence"
    assert rig.runner.counters.venue_errors == (1 if fault == "notice" else 0)
    await books_equal_simulator(rig, BOOKS, 10)


async def test_checksum_zero_like_okx_in_2026_relies_on_the_seq_chain() -> None:
    async with running_rig({"checksums": False}) as rig:
        rig.simulator.drop_next("BTC-USDT-SWAP")
        await eventually(lambda: rig.seen.states[SWAP] == [LIVE, STALE, LIVE], "SWAP resynced")
        await books_equal_simulator(rig, BOOKS, 10)
        assert rig.verified() == {BTC: 0, ETH: 0, SWAP: 0}
        assert rig.runner.counters.gaps == 1
        assert rig.seen.states[BTC] == rig.seen.states[ETH] == [LIVE]


async def test_padded_numbers_verify_against_the_exchange_strings() -> None:
    async with running_rig({"padded_numbers": True}) as rig:
        await eventually(lambda: min(rig.verified().values()) > 5, "checksums verified")
        await books_equal_simulator(rig, BOOKS, 10)
        assert rig.runner.counters.checksum_failures == 0


async def test_pings_are_answered_with_pongs() -> None:
    async with running_rig(app_ping_interval=0.05) as rig:
        await eventually(lambda: rig.simulator.pongs_sent >= 3, "pongs")
        await books_equal_simulator(rig, BOOKS, 10)
        assert rig.runner.connections == 1
        assert rig.runner.counters.malformed == 0


async def test_an_old_connection_is_replaced_without_a_gap() -> None:
    async with running_rig(max_connection_age=0.3) as rig:
        await eventually(lambda: rig.runner.rotations >= 1, "rotated")
        await books_equal_simulator(rig, BOOKS, 10)
        assert all(rig.seen.states[name] == [LIVE] for name in ALL)
        for name in ALL:
            assert rig.seen.seqs[name] == sorted(set(rig.seen.seqs[name]))
