"""The edge's core without NATS: sequence checks, repair, offsets, staleness, failover.

Messages are the real encoded bytes; the sink is a real ``BookRegistry``.
"""

from __future__ import annotations

from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from bus.codec import (
    StateReply,
    decode,
    encode_book,
    encode_bye,
    encode_heartbeat,
    encode_state,
    encode_status,
)
from bus.follower import Follower

BTC = "sim:BTC-USDT"
A = 0xA
B = 0xB
STALE_AFTER = 2.0


def book(seq: int, bid: int = 100, instrument: str = BTC) -> BookSnapshot:
    return BookSnapshot(instrument, seq, 1, 2, 3, bid, 1, bid + 1, 1, ((bid, 1),), ((bid + 1, 1),))


def live(instrument: str = BTC) -> InstrumentStatus:
    return InstrumentStatus(instrument, InstrumentState.LIVE, "in sync", 4)


class Ingest:
    """Encodes what one ingest process would publish, with its bus_seq per instrument."""

    def __init__(self, source: int) -> None:
        self.source = source
        self.sent: dict[str, int] = {}
        self.books: dict[str, BookSnapshot] = {}
        self.statuses: dict[str, InstrumentStatus] = {}

    def _next(self, instrument: str) -> int:
        self.sent[instrument] = self.sent.get(instrument, 0) + 1
        return self.sent[instrument]

    def book(self, snapshot: BookSnapshot) -> bytes:
        self.books[snapshot.instrument] = snapshot
        return encode_book(snapshot, source=self.source, bus_seq=self._next(snapshot.instrument))

    def status(self, status: InstrumentStatus) -> bytes:
        self.statuses[status.instrument] = status
        return encode_status(status, source=self.source, bus_seq=self._next(status.instrument))

    def heartbeat(self) -> bytes:
        return encode_heartbeat(self.source, 0, dict(self.sent))

    def reply(self, instruments: list[str]) -> StateReply:
        parts = []
        for name in instruments:
            seq = self.sent.get(name, 0)
            if name in self.books:
                parts.append(encode_book(self.books[name], source=self.source, bus_seq=seq))
            if name in self.statuses:
                parts.append(encode_status(self.statuses[name], source=self.source, bus_seq=seq))
        reply = decode(encode_state(self.source, parts))
        assert isinstance(reply, StateReply)
        return reply


class Edge:
    def __init__(self) -> None:
        self.registry = BookRegistry()
        self.follower = Follower(self.registry, stale_after=STALE_AFTER)
        self.now = 0.0
        self.seqs: list[int] = []
        self.registry.on_snapshot(lambda snapshot, _: self.seqs.append(snapshot.seq))

    def receive(self, *payloads: bytes) -> None:
        for payload in payloads:
            self.follower.receive(payload, self.now)

    def answer_requests(self, *ingests: Ingest) -> dict[int, list[str]]:
        """Answer every pending state request from the ingest it names."""
        requests = self.follower.take_requests(self.now)
        by_source = {ingest.source: ingest for ingest in ingests}
        for source, names in requests.items():
            self.follower.state_reply(by_source[source].reply(names), self.now)
        return requests

    def state(self) -> tuple[int | None, int | None, InstrumentState | None]:
        snapshot = self.registry.get(BTC)
        status = self.registry.status(BTC)
        return (
            snapshot.seq if snapshot else None,
            snapshot.bid if snapshot else None,
            status.state if status else None,
        )


def test_messages_in_order_are_applied_as_sent() -> None:
    ingest, edge = Ingest(A), Edge()
    edge.receive(ingest.status(live()), ingest.book(book(5)), ingest.book(book(6, bid=101)))
    assert edge.state() == (6, 101, InstrumentState.LIVE)
    assert edge.seqs == [5, 6]
    counters = edge.follower.counters
    assert (counters.gaps, counters.reordered, counters.late) == (0, 0, 0)


def test_a_lost_message_is_detected_and_repaired_by_a_state_request() -> None:
    ingest, edge = Ingest(A), Edge()
    edge.receive(ingest.status(live()), ingest.book(book(5)))
    edge.answer_requests(ingest)  # the join's request
    ingest.status(InstrumentStatus(BTC, InstrumentState.STALE, "gap: 7 != 6", 9))  # lost
    edge.receive(ingest.book(book(6, bid=90)))
    assert edge.follower.counters.gaps == 1
    assert edge.answer_requests(ingest) == {A: [BTC]}
    assert edge.state() == (6, 90, InstrumentState.STALE)
    assert edge.follower.counters.repairs == 2  # the join, then the gap


def test_a_lost_tail_is_found_by_the_heartbeat() -> None:
    ingest, edge = Ingest(A), Edge()
    edge.receive(ingest.status(live()), ingest.book(book(5)))
    edge.answer_requests(ingest)
    ingest.book(book(6, bid=120))  # lost, and nothing follows it but a heartbeat
    edge.receive(ingest.heartbeat())
    assert edge.follower.counters.gaps == 1
    edge.answer_requests(ingest)
    assert edge.state() == (6, 120, InstrumentState.LIVE)


def test_a_reordered_message_is_counted_and_never_moves_state_back() -> None:
    ingest, edge = Ingest(A), Edge()
    edge.receive(ingest.status(live()), ingest.book(book(5)))
    edge.answer_requests(ingest)
    sixth, seventh = ingest.book(book(6, bid=101)), ingest.book(book(7, bid=102))
    edge.receive(seventh, sixth)
    counters = edge.follower.counters
    assert (counters.gaps, counters.reordered, counters.late) == (1, 1, 0)
    assert edge.seqs == [5, 7]
    assert edge.state() == (7, 102, InstrumentState.LIVE)
    edge.answer_requests(ingest)
    assert edge.seqs == [5, 7]  # the repair had nothing newer


def test_a_late_joiner_learns_instruments_from_the_heartbeat() -> None:
    ingest, edge = Ingest(A), Edge()
    ingest.status(live())
    ingest.book(book(41))
    eth = "sim:ETH-USDT"
    ingest.status(InstrumentStatus(eth, InstrumentState.SYNCING, "starting", 1))
    edge.receive(ingest.heartbeat())
    assert edge.registry.instruments() == [BTC, eth]
    assert edge.answer_requests(ingest) == {A: [BTC, eth]}
    assert edge.state() == (41, 100, InstrumentState.LIVE)
    status = edge.registry.status(eth)
    assert status is not None and (status.state, status.reason) == (
        InstrumentState.SYNCING,
        "starting",
    )


def test_silence_marks_stale_with_a_reason_and_data_brings_it_back() -> None:
    ingest, edge = Ingest(A), Edge()
    edge.receive(ingest.status(live()), ingest.book(book(5)))
    edge.answer_requests(ingest)
    edge.now = STALE_AFTER - 0.1
    edge.follower.tick(edge.now)
    assert edge.state()[2] is InstrumentState.LIVE
    edge.now = STALE_AFTER + 0.1
    edge.follower.tick(edge.now)
    status = edge.registry.status(BTC)
    assert status is not None and status.state is InstrumentState.STALE
    assert status.reason == "bus: no data from its ingest for 2100 ms"
    edge.receive(ingest.heartbeat())
    edge.follower.tick(edge.now)
    edge.answer_requests(ingest)
    assert edge.state() == (5, 100, InstrumentState.LIVE)
    assert edge.follower.counters.stale_marks == 1


def test_failover_to_a_standby_never_moves_seq_back() -> None:
    primary, standby, edge = Ingest(A), Ingest(B), Edge()
    # The standby started earlier: its seqs for the same market are lower.
    edge.receive(primary.status(live()), primary.book(book(1_000)))
    edge.receive(standby.status(live()), standby.book(book(400)))
    edge.answer_requests(primary, standby)
    assert edge.seqs == [1_000]
    edge.receive(primary.book(book(1_001, bid=101)), standby.book(book(401, bid=101)))
    edge.receive(standby.heartbeat())
    edge.now = 1.2  # the primary is silent past failover_after; the standby is heard
    edge.receive(standby.book(book(402, bid=102)), standby.heartbeat())
    edge.follower.tick(edge.now)
    assert edge.follower.counters.failovers == 1
    edge.answer_requests(primary, standby)
    edge.receive(standby.book(book(403, bid=103)))
    assert edge.seqs == [1_000, 1_001, 1_002, 1_003]
    assert edge.state() == (1_003, 103, InstrumentState.LIVE)


def test_bye_fails_over_at_once() -> None:
    primary, standby, edge = Ingest(A), Ingest(B), Edge()
    edge.receive(primary.status(live()), primary.book(book(10)))
    edge.receive(standby.status(live()), standby.book(book(20)), standby.heartbeat())
    edge.answer_requests(primary, standby)
    edge.receive(encode_bye(A))
    assert edge.follower.counters.failovers == 1
    edge.answer_requests(primary, standby)
    assert edge.seqs == [10, 20]


def test_an_ingest_restart_continues_above_the_last_seq() -> None:
    first, edge = Ingest(A), Edge()
    edge.receive(first.status(live()), first.book(book(500)))
    edge.answer_requests(first)
    edge.receive(encode_bye(A))  # stopped, no standby: stale at once
    assert edge.state()[2] is InstrumentState.STALE
    restarted = Ingest(B)  # a smaller seq base than before: still never goes back
    edge.receive(restarted.status(live()), restarted.book(book(3)), restarted.heartbeat())
    edge.follower.tick(edge.now)
    edge.answer_requests(first, restarted)
    edge.receive(restarted.book(book(4, bid=104)))
    assert edge.seqs == [500, 501, 502]
    assert edge.state() == (502, 104, InstrumentState.LIVE)


def test_a_live_standby_is_preferred_while_the_followed_ingest_resyncs() -> None:
    primary, standby, edge = Ingest(A), Ingest(B), Edge()
    edge.receive(primary.status(live()), primary.book(book(10)))
    edge.receive(standby.status(live()), standby.book(book(10)), standby.heartbeat())
    edge.answer_requests(primary, standby)
    edge.receive(primary.status(InstrumentStatus(BTC, InstrumentState.STALE, "gap", 5)))
    edge.follower.tick(edge.now)
    assert edge.follower.counters.failovers == 1
    edge.answer_requests(primary, standby)
    assert edge.state()[2] is InstrumentState.LIVE


def test_bad_payloads_are_counted_not_raised() -> None:
    edge = Edge()
    edge.receive(b"junk", b"MB\x01")
    assert edge.follower.counters.bad_messages == 2


def test_a_reply_older_than_the_stream_still_brings_the_state() -> None:
    ingest, edge = Ingest(A), Edge()
    ingest.status(live())  # sent before the edge subscribed
    edge.receive(ingest.book(book(2)))
    assert edge.follower.take_requests(edge.now) == {A: [BTC]}
    reply = ingest.reply([BTC])  # built now, handled after a newer stream message
    edge.receive(ingest.book(book(3, bid=103)))
    edge.follower.state_reply(reply, edge.now)
    assert edge.state() == (3, 103, InstrumentState.LIVE)
    assert edge.seqs == [2, 3]
