"""Every venue of the venue table, its feed runner against its simulator over loopback.

One suite for all venues: for each venue id with a built-in simulator
(``app.venues.VENUE_KINDS``), its adapter syncs books equal to the simulator's; an
instrument fault (a lost message, a bad checksum) resyncs that instrument alone while
the others stream; a sequence restart is followed without a resync; malformed frames
and venue errors are counted and harmless; connection faults (disconnect, silence,
shutdown notice) reconnect and resync every book; an old connection is replaced
make-before-break. Faults are injected through the simulators' common ``inject``, each
where the venue's simulator supports it. What differs between venues is stated once,
in ``tests/feeds/venues.py``; behaviour only one venue has is tested beside its
adapter (``tests/feeds/<venue>/test_runner.py``).
"""

from __future__ import annotations

import time
from itertools import pairwise

import pytest

from app.venues import simulated_venues
from book.incidents import IncidentKind
from book.status import InstrumentState
from feeds.simulator.faults import Fault, FaultCounters
from tests.feeds.rig import books_equal_simulator, silence_venue
from tests.feeds.venues import EXPECTED, Count, Rig, books, build_simulator, running_venue
from tests.waiting import eventually

LIVE, STALE = InstrumentState.LIVE, InstrumentState.STALE
VENUES = simulated_venues()
INSTRUMENT_FAULTS = (Fault.DROP, Fault.CHECKSUM)
CONNECTION_FAULTS = (Fault.DISCONNECT, Fault.SILENCE, Fault.SHUTDOWN)


def counted(count: Count | None, rig: Rig) -> dict[str, int] | None:
    """``count`` of every instrument of the rig (``None`` where the simulator keeps none)."""
    if count is None:
        return None
    return {name: count(rig.simulator, symbol) for name, symbol in books(rig).items()}


def supported(faults: tuple[Fault, ...]) -> list[tuple[str, Fault]]:
    """(venue, fault) for every venue whose simulator can inject the fault."""
    return [
        (venue, fault)
        for venue in VENUES
        for fault in faults
        if fault in build_simulator(venue).supported_faults
    ]


def test_every_simulated_venue_states_what_it_must_do() -> None:
    assert set(EXPECTED) == set(VENUES)


@pytest.mark.parametrize("venue", VENUES)
async def test_books_sync_and_equal_the_venue(venue: str) -> None:
    expected = EXPECTED[venue]
    async with running_venue(venue) as rig:
        if expected.checksummed:
            await eventually(lambda: min(rig.verified().values()) > 5, "checksums verified")
        await books_equal_simulator(rig, books(rig), expected.depth)
        for index, runner in enumerate(rig.runners):
            counters = runner.counters
            assert (counters.gaps, counters.checksum_failures, counters.resyncs) == (0, 0, 0)
            assert (counters.malformed, counters.venue_errors, runner.connections) == (0, 0, 1)
            group = runner.instruments
            assert rig.kinds(index) == [IncidentKind.CONNECT] + [IncidentKind.LIVE] * len(group)
        assert rig.simulator.clients == len(rig.runners)
        if expected.checksummed:
            # Every published book was one verified message (snapshots included).
            assert rig.verified() == {name: rig.seen.published[name] for name in rig.instruments}
        once = dict.fromkeys(rig.instruments, 1)
        assert counted(expected.subscriptions, rig) in (None, once)
        served = counted(expected.snapshots_served, rig)
        if served is not None and rig.adapters[0].rest_snapshots:
            assert min(served.values()) >= 1
        else:
            assert served in (None, once)


@pytest.mark.parametrize(("venue", "fault"), supported(INSTRUMENT_FAULTS))
async def test_an_instrument_fault_resyncs_only_that_instrument_while_the_others_stream(
    venue: str, fault: Fault
) -> None:
    expected = EXPECTED[venue]
    incident = expected.drop_seen_as if fault is Fault.DROP else IncidentKind.CHECKSUM
    async with running_venue(venue) as rig:
        first, *others = rig.instruments
        symbol = books(rig)[first]
        served = counted(expected.snapshots_served, rig)
        simulator = rig.simulator
        simulator.hold_snapshots(symbol)  # its new snapshot waits until released
        simulator.inject(fault, symbol=symbol)
        await eventually(lambda: STALE in rig.seen.states[first], "stale")
        during = dict(rig.seen.published)
        await eventually(
            lambda: all(rig.seen.published[n] > during[n] + 5 for n in others),
            "the others stream during the resync",
        )
        assert not rig.registry.is_live(first)
        assert rig.seen.published[first] == during[first]
        simulator.release_snapshots(symbol)
        await eventually(lambda: rig.registry.is_live(first), "live again")

        assert rig.seen.states == {first: [LIVE, STALE, LIVE]} | {n: [LIVE] for n in others}
        kinds = IncidentKind
        assert rig.seen.kinds(first) == [kinds.LIVE, incident, kinds.RESYNC, kinds.LIVE]
        assert all(rig.seen.kinds(name) == [kinds.LIVE] for name in others)
        if served is not None:
            now = counted(expected.snapshots_served, rig)
            assert now is not None
            assert now[first] == served[first] + 1 or (
                rig.adapters[0].rest_snapshots and now[first] > served[first]
            )
            assert {n: now[n] for n in others} == {n: served[n] for n in others}
        gaps = sum(runner.counters.gaps for runner in rig.runners)
        checksum_failures = sum(runner.counters.checksum_failures for runner in rig.runners)
        resyncs = sum(runner.counters.resyncs for runner in rig.runners)
        expected_counts = (1, 0, 1) if incident is IncidentKind.GAP else (0, 1, 1)
        assert (gaps, checksum_failures, resyncs) == expected_counts
        assert [runner.connections for runner in rig.runners] == [1] * len(rig.runners)
        faults = simulator.faults
        if fault is Fault.CHECKSUM:
            assert (faults.dropped, faults.corrupted_checksums) == (0, 1)
        elif incident is IncidentKind.GAP:
            assert (faults.dropped, faults.corrupted_checksums) == (1, 0)
        else:  # only a checksum shows a drop: a harmless one is followed by another
            assert faults.dropped >= 1 and faults.corrupted_checksums == 0
        seqs = rig.seen.seqs[first]
        assert seqs == sorted(set(seqs))  # the book's version keeps growing
        await books_equal_simulator(rig, books(rig), expected.depth)


@pytest.mark.parametrize("venue", [venue for venue, _ in supported((Fault.RESTART,))])
async def test_a_sequence_restart_is_followed_without_a_resync(venue: str) -> None:
    expected = EXPECTED[venue]
    assert expected.sequence is not None
    sequence = expected.sequence
    async with running_venue(venue) as rig:
        first = rig.instruments[0]
        symbol = books(rig)[first]
        before = sequence(rig.simulator, symbol)
        rig.simulator.inject(Fault.RESTART, symbol=symbol)
        await eventually(lambda: rig.simulator.faults.restarts == 1, "restart sent")
        await eventually(lambda: sequence(rig.simulator, symbol) < before, "sequence restarted")
        published = rig.seen.published[first]
        await eventually(lambda: rig.seen.published[first] > published + 3, "it keeps streaming")
        await books_equal_simulator(rig, books(rig), expected.depth)
        assert 1 <= sequence(rig.simulator, symbol) < before
        assert all(rig.seen.states[name] == [LIVE] for name in rig.instruments)
        for runner in rig.runners:
            assert (runner.counters.gaps, runner.counters.resyncs) == (0, 0)


@pytest.mark.parametrize("venue", VENUES)
async def test_malformed_frames_and_venue_errors_are_counted_and_harmless(venue: str) -> None:
    expected = EXPECTED[venue]
    async with running_venue(venue) as rig:
        simulator = rig.simulator
        errors = int(Fault.ERROR in simulator.supported_faults)
        assert errors == (expected.error is not None)
        simulator.inject(Fault.MALFORMED)
        if errors:
            simulator.inject(Fault.ERROR)
        await eventually(
            lambda: all(
                (r.counters.malformed, r.counters.venue_errors) == (1, errors) for r in rig.runners
            ),
            "malformed frame and error counted on every connection",
        )
        await books_equal_simulator(rig, books(rig), expected.depth)
        assert [runner.connections for runner in rig.runners] == [1] * len(rig.runners)
        assert all(rig.seen.states[name] == [LIVE] for name in rig.instruments)
        for own in rig.incidents:
            reported = [(i.instrument, i.detail) for i in own if i.kind is IncidentKind.ERROR]
            assert reported == [(None, expected.error)] * errors
        clients = len(rig.runners)
        assert simulator.faults == FaultCounters(malformed=clients, errors=clients * errors)


@pytest.mark.parametrize(("venue", "fault"), supported(CONNECTION_FAULTS))
async def test_connection_faults_reconnect_and_resync_every_book(venue: str, fault: Fault) -> None:
    expected = EXPECTED[venue]
    async with running_venue(venue) as rig:
        if fault is Fault.SILENCE:
            sending_again = await silence_venue(rig)
        else:
            rig.simulator.inject(fault)
            sending_again = time.monotonic()
        await eventually(lambda: all(r.connections >= 2 for r in rig.runners), "reconnected")
        await eventually(lambda: time.monotonic() >= sending_again, "the venue sends again")
        for runner in rig.runners:
            runner.adapter.silence_timeout = 30.0  # the paused market below sends nothing
        # A connection opened during a silence has books that missed what the venue did
        # not send: only messages after it can show that (a gap, a bad checksum).
        since = dict(rig.seen.published)
        await eventually(
            lambda: all(
                rig.registry.is_live(name) and rig.seen.published[name] > since[name] + 1
                for name in rig.instruments
            ),
            "live again, and streaming",
        )
        for index, runner in enumerate(rig.runners):
            kinds = rig.kinds(index)
            assert kinds.count(IncidentKind.CONNECT) == runner.connections
            assert kinds.count(IncidentKind.DISCONNECT) == runner.connections - 1
            assert runner.counters.venue_errors == (fault is Fault.SHUTDOWN)
            if fault is not Fault.SILENCE:
                assert (runner.connections, runner.counters.gaps) == (2, 0)
            elif expected.connection_sequence:
                # A connection opened while the venue was silent lost its first messages.
                assert runner.counters.gaps <= runner.connections - 1
            else:
                assert runner.counters.gaps == 0
        for name in rig.instruments:
            states = rig.seen.states[name]
            if fault is Fault.SILENCE:
                # A silent venue may stay silent past a reconnect: one more cycle each
                # time (and one more stale reason where a new connection saw a gap).
                assert states[:2] == [LIVE, STALE] and states[-1] == LIVE
                assert (LIVE, LIVE) not in pairwise(states)
            else:
                assert states == [LIVE, STALE, LIVE]
        if fault is Fault.DISCONNECT:
            clients = len(rig.runners)
            assert rig.simulator.faults.disconnected == clients
            assert rig.simulator.connections_accepted == 2 * clients
        await books_equal_simulator(rig, books(rig), expected.depth)


@pytest.mark.parametrize("venue", VENUES)
async def test_connection_rotation_is_make_before_break(venue: str) -> None:
    expected = EXPECTED[venue]
    async with running_venue(venue, max_connection_age=0.5) as rig:
        # A standby syncs every book before it takes over: slow on a loaded machine.
        await eventually(
            lambda: all(r.rotations >= 2 for r in rig.runners), "rotated twice", limit=40
        )
        before = dict(rig.seen.published)
        await eventually(
            lambda: all(rig.seen.published[n] > before[n] + 3 for n in rig.instruments),
            "updates continue after rotating",
        )
        await books_equal_simulator(rig, books(rig), expected.depth)
        for name in rig.instruments:
            assert rig.seen.states[name] == [LIVE]  # never stale
            seqs = rig.seen.seqs[name]
            assert seqs == sorted(set(seqs))  # strictly increasing across connections
        assert IncidentKind.DISCONNECT not in rig.seen.kinds(None)
        assert all(r.connections >= r.rotations + 1 for r in rig.runners)
        # Two connections open at once each keep their own sequence (Coinbase's
        # sequence_num is per connection): neither sees the other's numbers as a gap.
        assert all(r.counters.gaps == 0 for r in rig.runners)


@pytest.mark.parametrize("venue", [venue for venue in VENUES if EXPECTED[venue].pongs_sent])
async def test_application_pings_are_answered(venue: str) -> None:
    pongs_sent = EXPECTED[venue].pongs_sent
    assert pongs_sent is not None
    async with running_venue(venue, app_ping_interval=0.02) as rig:
        await eventually(lambda: pongs_sent(rig.simulator) >= 3, "pongs")
        await books_equal_simulator(rig, books(rig), EXPECTED[venue].depth)
        assert rig.runner.connections == 1
        assert rig.runner.counters.malformed == 0
