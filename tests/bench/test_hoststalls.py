"""The host-stall count the bench takes before every scenario (``bench.hoststalls``)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

from bench.hoststalls import HostStalls, measure_stalls

MS = 1_000_000


def test_a_process_stopped_while_it_spins_is_a_stall_of_that_length() -> None:
    measured: list[HostStalls] = []
    spinning = threading.Thread(target=lambda: measured.append(measure_stalls(1.5, cores=2)))
    spinning.start()
    deadline = time.monotonic() + 30
    while len(children := multiprocessing.active_children()) < 2:
        assert time.monotonic() < deadline, "the spinning processes did not start"
        time.sleep(0.01)
    time.sleep(1.0)  # they start together half a second after the pool does, then spin
    victim = children[0].pid
    assert victim is not None
    os.kill(victim, signal.SIGSTOP)
    time.sleep(0.08)
    os.kill(victim, signal.SIGCONT)
    spinning.join()

    stalls = measured[0]
    assert stalls.cores == 2
    assert stalls.seconds == 1.5
    assert stalls.longest_ms >= 70
    assert stalls.over_ms[-1] >= 1  # over 10 ms
    assert list(stalls.over_ms) == sorted(stalls.over_ms, reverse=True)


def test_the_summary_counts_each_threshold_per_second_per_core() -> None:
    stalls = HostStalls.from_gaps(2.0, [[int(1.5 * MS), 3 * MS, 12 * MS], [int(6.5 * MS)], []])
    assert stalls == HostStalls(cores=3, seconds=2.0, over_ms=(4, 3, 2, 1), longest_ms=12.0)
    assert stalls.per_core_second(2) == 3 / 6
    assert stalls.render() == (
        "- host stalls with every core busy (3 processes spinning 2 s before it started): "
        "a core was taken from a process for over 1 / 2 / 5 / 10 ms 0.67 / 0.5 / 0.33 / "
        "0.17 times a second per core, the longest 12.0 ms"
    )
    assert stalls.to_json()["over_ms"] == (4, 3, 2, 1)
    quiet = HostStalls.from_gaps(2.0, [[], []])
    assert quiet.over_ms == (0, 0, 0, 0)
    assert quiet.longest_ms == 0.0
