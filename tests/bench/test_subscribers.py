"""The lean subscribers' per-change delays: with a conflating server a frame answers every
change of its key since the previous frame, and each of them is recorded once. A pool
that times only frames with their own read stamp counts the others without timing them."""

from __future__ import annotations

from bench.subscribers import LeanSubscriber, PoolSpec, _Stats


def recorded(stats: _Stats) -> list[int]:
    return [
        item.value_iterated_to
        for item in stats.changes.get_recorded_iterator()
        for _ in range(item.count_at_value_iterated_to)
    ]


async def test_a_tracker_records_every_change_a_frame_answers_first() -> None:
    stats = _Stats()
    stats.start_window()
    spec = PoolSpec("ws://127.0.0.1/", 1, origin="seq", change_interval_ns=100, trackers=1)
    client = LeanSubscriber("127.0.0.1", "/", spec, (), stats, tracker=True)

    client._track([{"instrument": "A", "seq": 1_000}], arrival=1_050)  # first: no reference
    # Changes of A were due at 1,100, 1,200 and 1,300; the frame reflects the newest.
    client._track(
        [{"instrument": "A", "seq": 1_300}, {"instrument": "A", "seq": 1_300}], arrival=1_350
    )
    client._track([{"instrument": "A", "seq": 1_300}], arrival=1_400)  # nothing new
    client._track([{"instrument": "B", "seq": 5_000}, {"type": "profit_total"}], arrival=5_010)

    assert recorded(stats) == [50, 150, 250]


async def test_other_clients_do_not_track() -> None:
    stats = _Stats()
    stats.start_window()
    spec = PoolSpec("ws://127.0.0.1/", 1, origin="seq", change_interval_ns=100, trackers=1)
    client = LeanSubscriber("127.0.0.1", "/", spec, (), stats)
    client._text(b'{"instrument":"A","seq":1000,"ts_send":1000}', 1_100, True)
    client._text(b'{"instrument":"A","seq":1300,"ts_send":1300}', 1_400, False)
    assert recorded(stats) == []
    assert stats.end_to_end.get_total_count() == 2  # sampled as usual


async def test_a_pool_of_own_stamps_counts_a_frame_without_one_but_does_not_time_it() -> None:
    stats = _Stats()
    stats.start_window()
    spec = PoolSpec("ws://127.0.0.1/", 1, origin="seq", own_stamps_only=True)
    client = LeanSubscriber("127.0.0.1", "/", spec, (), stats)
    # Two frames of one read: the older carries the newer one's stamp (1,400).
    client._text(b'[{"instrument":"A","seq":1000,"ts_send":1000}]', 1_400, False)
    client._text(b'[{"instrument":"A","seq":1300,"ts_send":1300}]', 1_400, True)
    assert (stats.frames, stats.messages, stats.untimed) == (2, 2, 1)
    assert stats.end_to_end.get_total_count() == 1
    assert stats.end_to_end.get_max_value() == 100  # the newer frame's, not 400
