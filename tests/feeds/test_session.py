"""The feed session's decision table, with no I/O: events and ticks in, what it wrote
to its sink and the actions it returned out."""

from __future__ import annotations

from dataclasses import dataclass, field

from book.fixed import parse_fixed
from book.incidents import FeedIncident, IncidentKind
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from feeds.coinbase.adapter import CoinbaseAdapter
from feeds.events import (
    BookDeltaEvent,
    BookSnapshotEvent,
    ConnectionGapEvent,
    MalformedEvent,
    VenueErrorEvent,
)
from feeds.session import FeedSession, Reconnect, RequestSnapshot
from feeds.silence import SECOND_NS
from feeds.symbols import SymbolMap
from feeds.sync import ProblemKind, SyncProblem

BTC, ETH = "coinbase:BTC-USD", "coinbase:ETH-USD"
ONE = parse_fixed("1")


@dataclass
class Written:
    """A FeedSink that keeps every call, in order."""

    calls: list[tuple[str, object]] = field(default_factory=list)

    def add_instrument(self, instrument: str, ts: int) -> None:
        self.calls.append(("add", instrument))

    def publish(self, snapshot: BookSnapshot) -> None:
        self.calls.append(("book", (snapshot.instrument, snapshot.seq, snapshot.bid)))

    def set_status(self, status: InstrumentStatus) -> None:
        self.calls.append(("status", (status.instrument, status.state, status.reason)))

    def incident(self, incident: FeedIncident) -> None:
        self.calls.append(("incident", (incident.instrument, incident.kind, incident.detail)))

    def take(self) -> list[tuple[str, object]]:
        calls, self.calls = self.calls, []
        return calls


def book(name: str, bid: str, ask: str) -> BookSnapshotEvent:
    return BookSnapshotEvent(name, ((parse_fixed(bid), ONE),), ((parse_fixed(ask), ONE),))


def session(**adapter_settings: float) -> tuple[FeedSession, Written]:
    adapter = CoinbaseAdapter(SymbolMap("coinbase", {"BTC-USD": "BTC-USD", "ETH-USD": "ETH-USD"}))
    for name, value in adapter_settings.items():
        setattr(adapter, name, value)
    sink = Written()
    feed = FeedSession(adapter, [BTC, ETH], sink=sink, capture_depth=5)
    feed.start(0)
    return feed, sink


def live(feed: FeedSession, sink: Written) -> None:
    for name in (BTC, ETH):
        assert feed.receive_event(book(name, "100", "101"), 1) == ()
    sink.take()


def test_the_first_snapshot_sets_live_and_later_ones_only_publish() -> None:
    feed, sink = session()
    assert feed.receive_event(book(BTC, "100", "101"), 5) == ()
    assert sink.take() == [
        ("book", (BTC, 1, parse_fixed("100"))),
        ("status", (BTC, InstrumentState.LIVE, "in sync")),
        ("incident", (BTC, IncidentKind.LIVE, "seq 1")),
    ]
    delta = BookDeltaEvent(BTC, ((parse_fixed("100.5"), ONE),), ())
    assert feed.receive_event(delta, 6) == ()
    assert sink.take() == [("book", (BTC, 2, parse_fixed("100.5")))]
    assert feed.is_live(BTC) and not feed.is_live(ETH)


def test_a_problem_stales_resets_and_requests_a_snapshot_of_that_instrument_only() -> None:
    feed, sink = session()
    live(feed, sink)
    crossing = BookDeltaEvent(BTC, ((parse_fixed("102"), ONE),), ())
    actions = feed.receive_event(crossing, 7)
    (action,) = actions
    assert isinstance(action, RequestSnapshot) and action.instrument == BTC
    assert action.problem is not None and action.problem.kind is ProblemKind.CROSSED
    reason = str(action.problem)
    assert sink.take() == [
        ("incident", (BTC, IncidentKind.CHECKSUM, reason)),
        ("status", (BTC, InstrumentState.STALE, reason)),
        ("incident", (BTC, IncidentKind.RESYNC, "resync started")),
    ]
    assert (feed.counters.resyncs, feed.counters.crossed) == (1, 1)
    assert not feed.syncs[BTC].live and feed.syncs[ETH].live
    assert not feed.is_live(BTC) and feed.is_live(ETH)


def test_a_lost_message_of_the_connection_resyncs_every_instrument() -> None:
    feed, sink = session()
    live(feed, sink)
    actions = feed.receive_event(ConnectionGapEvent("sequence 4 after 2"), 8)
    problem = SyncProblem(ProblemKind.GAP, "sequence 4 after 2")
    assert list(actions) == [RequestSnapshot(BTC, problem), RequestSnapshot(ETH, problem)]
    assert feed.counters.gaps == 2


def test_venue_errors_are_reported_and_a_closing_one_asks_to_reconnect() -> None:
    feed, sink = session()
    assert feed.receive_event(VenueErrorEvent("rate limited", BTC), 9) == ()
    assert feed.receive_event(VenueErrorEvent("going away", reconnect=True), 9) == [
        Reconnect("going away")
    ]
    assert sink.take() == [
        ("incident", (BTC, IncidentKind.ERROR, "rate limited")),
        ("incident", (None, IncidentKind.ERROR, "going away")),
    ]
    assert feed.counters.venue_errors == 2


def test_a_malformed_frame_is_counted_and_changes_nothing() -> None:
    feed, sink = session()
    live(feed, sink)
    assert feed.receive_event(MalformedEvent("not json", "{"), 9) == ()
    assert sink.take() == []
    assert feed.counters.malformed == 1


def test_a_tick_retries_a_resync_that_did_not_come_back() -> None:
    feed, sink = session(resync_timeout=2.0)
    feed.receive_event(book(ETH, "100", "101"), 1)
    sink.take()
    assert feed.tick(2 * SECOND_NS) == ()
    assert list(feed.tick(3 * SECOND_NS)) == [RequestSnapshot(BTC, None)]
    assert sink.take() == []  # a retry is not a new problem
    assert feed.tick(4 * SECOND_NS) == ()  # the retry started the clock again


def delta(name: str, bid: str) -> BookDeltaEvent:
    return BookDeltaEvent(name, ((parse_fixed(bid), ONE),), ())


def ticks(feed: FeedSession, start: float, end: float, every: float = 0.5) -> list[object]:
    """Watchdog passes every ``every`` s from ``start`` to ``end`` (seconds); their actions."""
    actions: list[object] = []
    at = start
    while at <= end + 1e-9:
        actions += feed.tick(int(at * SECOND_NS))
        at += every
    return actions


def test_a_fixed_instrument_silence_timeout_resyncs_a_silent_live_instrument() -> None:
    feed, sink = session(instrument_silence_timeout=5.0, learn_instrument_silence=False)
    live(feed, sink)
    assert ticks(feed, 0.5, 2.0) == []
    feed.receive_event(delta(ETH, "99"), 2 * SECOND_NS)
    assert ticks(feed, 2.5, 5.0) == []
    (action,) = ticks(feed, 5.5, 5.5)
    assert action == RequestSnapshot(BTC, SyncProblem(ProblemKind.SILENT, "no book message for 5s"))
    assert feed.is_live(ETH)


def test_a_busy_instrument_that_goes_silent_is_stale_after_the_floor() -> None:
    feed, sink = session()  # learned thresholds, floor 3 s, no ceiling
    live(feed, sink)
    for step in range(1, 21):  # BTC: 10 messages a second for 2 s; ETH: one message
        at = step * SECOND_NS // 10
        feed.receive_event(delta(BTC, "100.5" if step % 2 else "100.25"), at)
        if step % 5 == 0:
            assert feed.tick(at) == ()
    feed.receive_event(delta(ETH, "99"), 2 * SECOND_NS)
    assert ticks(feed, 2.5, 4.5) == []
    (action,) = ticks(feed, 5.0, 5.0)  # BTC silent for its threshold: the 3 s floor
    assert isinstance(action, RequestSnapshot) and action.instrument == BTC
    assert action.problem is not None and action.problem.kind is ProblemKind.SILENT
    assert feed.is_live(ETH)  # quiet, with no usual rate that its silence breaks


def test_an_instrument_whose_silence_was_harmless_gets_longer_next_time() -> None:
    feed, sink = session()
    live(feed, sink)
    for step in range(1, 21):
        at = step * SECOND_NS // 10
        feed.receive_event(delta(BTC, "100.5" if step % 2 else "100.25"), at)
        if step % 5 == 0:
            feed.tick(at)
    assert len(ticks(feed, 2.5, 5.0)) == 1  # stale after the floor, resynced
    feed.receive_event(book(BTC, "100", "101"), int(5.2 * SECOND_NS))  # alive, and quiet
    assert ticks(feed, 5.5, 8.5) == []  # not again after the floor


def test_a_late_watchdog_pass_judges_no_silence() -> None:
    feed, sink = session(instrument_silence_timeout=1.0)
    live(feed, sink)
    assert feed.tick(1 * SECOND_NS) == ()
    assert feed.tick(5 * SECOND_NS) == ()  # the process was stalled for 4 s
    actions = feed.tick(int(5.5 * SECOND_NS))
    assert {a.instrument for a in actions if isinstance(a, RequestSnapshot)} == {BTC, ETH}


def test_a_lost_connection_stales_only_the_live_instruments() -> None:
    feed, sink = session()
    feed.receive_event(book(BTC, "100", "101"), 1)
    sink.take()
    feed.connection_lost(SyncProblem(ProblemKind.DISCONNECTED, "closed by venue"), 2)
    assert sink.take() == [
        ("status", (BTC, InstrumentState.STALE, "disconnected: closed by venue")),
    ]
    assert not feed.is_live(BTC) and feed.ever_live


def test_books_continue_from_the_versions_of_the_session_they_replace() -> None:
    first, _ = session()
    for _ in range(3):
        first.receive_event(book(BTC, "100", "101"), 1)
    second, sink = session()
    second.continue_from(first.seqs())
    second.receive_event(book(BTC, "100", "101"), 2)
    assert sink.take()[0] == ("book", (BTC, 4, parse_fixed("100")))


def test_a_halted_instrument_is_passed_by_until_it_resumes() -> None:
    feed, sink = session(resync_timeout=1.0)
    live(feed, sink)
    feed.halt(BTC)
    assert feed.is_halted(BTC) and not feed.is_live(BTC)
    assert sink.take() == []  # its state is the driver's to tell
    # What the venue still sends for it, the watchdog, a resync request: nothing.
    assert feed.receive_event(book(BTC, "90", "91"), 2) == ()
    assert feed.tick(10 * SECOND_NS) == ()
    assert feed.resync(BTC, SyncProblem(ProblemKind.REQUESTED, "operator"), 11) == ()
    assert feed.receive_event(book(ETH, "100", "102"), 12) == ()
    assert sink.take() == [("book", (ETH, 2, parse_fixed("100")))]
    assert feed.seqs() == {BTC: 1, ETH: 2}  # its version is kept
    # A session that replaces this one starts with it halted.
    replacement = FeedSession(feed.adapter, [BTC, ETH], sink=sink, halted=[BTC])
    replacement.continue_from(feed.seqs())
    assert replacement.is_halted(BTC) and replacement.seqs() == {BTC: 1, ETH: 2}
    assert list(feed.resume(BTC, 13)) == [RequestSnapshot(BTC, None)]
    assert feed.resume(BTC, 14) == ()  # not halted any more
    assert feed.receive_event(book(BTC, "95", "96"), 15) == ()
    assert sink.take() == [
        ("book", (BTC, 2, parse_fixed("95"))),
        ("status", (BTC, InstrumentState.LIVE, "in sync")),
        ("incident", (BTC, IncidentKind.LIVE, "seq 2")),
    ]


def heartbeat(sequence_num: int) -> str:
    return (
        '{"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:56.12Z",'
        f'"sequence_num":{sequence_num},"events":[{{"current_time":"","heartbeat_counter":1}}]}}'
    )


def test_two_sessions_of_one_adapter_keep_their_own_connection_sequence() -> None:
    """Make-before-break: a standby connection's session runs beside the old one's,
    with the same adapter; each connection numbers its messages from 0 on its own."""
    old, old_sink = session()
    live(old, old_sink)
    for number in range(4):
        assert old.receive(heartbeat(number), 2) == ()
    standby = FeedSession(old.adapter, [BTC, ETH], sink=Written(), counters=old.counters)
    standby.start(3)
    for number in range(3):
        assert standby.receive(heartbeat(number), 4) == ()
        assert old.receive(heartbeat(4 + number), 4) == ()
    assert old.counters.gaps == 0
    assert old.is_live(BTC) and old.is_live(ETH)
    # Each still sees a loss of its own.
    assert [type(a) for a in standby.receive(heartbeat(9), 5)] == [RequestSnapshot] * 2
    assert old.receive(heartbeat(7), 5) == ()
    assert old.is_live(BTC)
