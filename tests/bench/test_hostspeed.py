"""The host-speed probe the bench runs beside every scenario (``bench.hostspeed``)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.hostspeed import HostSpeed, HostSpeedProbe, cpu_times, probe_work, steal_share

STAT = "cpu  {user} 10 200 5000 30 0 7 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"


def test_the_probe_samples_the_cpu_time_of_the_same_work_until_it_stops() -> None:
    with HostSpeedProbe(interval=0.01, rounds=500) as probe:
        time.sleep(0.2)
    speed = probe.result()
    assert speed is not None
    assert speed.probes >= 5  # about one per 10 ms, the first at once
    assert 0 < speed.fastest_us <= speed.p50_us <= speed.p90_us <= speed.slowest_us
    assert speed.slowdown == speed.slowest_us / speed.fastest_us >= 1.0
    samples = speed.probes
    time.sleep(0.05)
    assert probe.result() == speed  # stopped: no more samples
    assert speed.probes == samples


def test_the_probe_work_is_the_same_every_time() -> None:
    assert probe_work(300) == probe_work(300) != probe_work(301)


def test_the_line_and_the_json_give_the_figures() -> None:
    speed = HostSpeed(
        probes=40,
        fastest_us=400.0,
        p50_us=450.4,
        p90_us=610.0,
        slowest_us=800.0,
        steal_share=0.0125,
    )
    assert speed.render() == (
        "- host speed while it ran: the same pure-Python probe (40 runs, one per 0.25 s "
        "in the bench's main process) took 400 / 450 / 610 / 800 µs of CPU (fastest / p50"
        " / p90 / slowest): up to 2.00x its fastest; CPU steal 1.2%"
    )
    assert speed.to_json()["p90_us"] == 610.0
    unknown = HostSpeed(1, 10.0, 10.0, 10.0, 10.0, steal_share=None)
    assert unknown.render().endswith("up to 1.00x its fastest")


def test_steal_is_the_share_of_the_machines_ticks_between_two_readings(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(STAT.format(user=1000, steal=50))
    before = cpu_times(stat)
    stat.write_text(STAT.format(user=1900, steal=150))
    after = cpu_times(stat)
    assert before == (50, 1000 + 10 + 200 + 5000 + 30 + 7 + 50)
    assert steal_share(before, after) == 100 / 1000
    assert steal_share(after, after) is None  # no tick between them
    stat.write_text("intr 1 2 3\n")
    assert cpu_times(stat) is None
    assert cpu_times(tmp_path / "missing") is None
    assert steal_share(None, after) is None
