"""Each scenario in a fresh process: fake scenarios registered only here (module-level
functions, which the scenario's process imports from this module) show that nothing of
one reaches the next, that a scenario which raises or dies is reported while the others
run, and that Ctrl-C (or SIGTERM) leaves no process behind."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from bench.agent import Agent, Command, serve_commands
from bench.cli import main
from bench.report import REPO, Progress, ScenarioResult, Target

_HELD: list[bytearray] = []
"""What a scenario leaves behind in its process, as the real ones left their data."""


def _fills_memory(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    _HELD.append(bytearray(8 << 20))
    return ScenarioResult(
        "fills",
        "fake: leaves 8 MB behind",
        "how: a bytearray",
        targets=[Target("fills: a target met", 2, 1, "")],
        figures={"pid": os.getpid(), "held": len(_HELD)},
    )


def _reports_its_process(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    return ScenarioResult(
        "reports",
        "fake: reports its process",
        "how: os.getpid()",
        targets=[Target("reports: a target missed", 0, 1, "")],
        figures={"pid": os.getpid(), "held": len(_HELD)},
    )


def _raises(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    raise ValueError("no data for this scenario\nand a second line")


def _dies(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    raise AssertionError("not reached")


FAKES = {
    "fills": _fills_memory,
    "raises": _raises,
    "reports": _reports_its_process,
    "dies": _dies,
}


def test_each_scenario_runs_in_a_fresh_process_and_failures_do_not_stop_the_rest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    figures = tmp_path / "figures.json"
    assert main(["all", "--stall-seconds", "0", "--json", str(figures)], runners=FAKES) == 1

    report = json.loads(figures.read_text())
    fills, reports = report["results"]
    raised, died = report["errors"]
    assert [fills["key"], reports["key"]] == ["fills", "reports"]
    assert report["failed"] == ["raises", "dies"]
    assert raised == {
        "key": "raises",
        "error": "ValueError: no data for this scenario",
        "conditions": raised["conditions"],
    }
    assert died["key"] == "dies"
    assert died["error"] == "the scenario process died (killed by SIGKILL)"

    pids = [entry["conditions"]["pid"] for entry in (fills, raised, reports, died)]
    assert len(set(pids)) == 4
    assert os.getpid() not in pids
    assert fills["figures"] == {"pid": pids[0], "held": 1}
    # The scenario after the one that filled its process starts with nothing of it.
    assert reports["figures"] == {"pid": pids[2], "held": 0}
    assert all(entry["conditions"]["parent_rss_bytes"] > 0 for entry in (fills, reports))
    # The bench's main process probed the host's speed while each one ran.
    for entry in (fills, reports):
        host = entry["host"]
        assert host["probes"] >= 1
        assert 0 < host["fastest_us"] <= host["p50_us"] <= host["p90_us"] <= host["slowest_us"]

    captured = capsys.readouterr()
    titles = [line for line in captured.out.splitlines() if line.startswith("## ")]
    assert titles == [
        "## fake: leaves 8 MB behind",
        "## raises: FAILED",
        "## fake: reports its process",
        "## dies: FAILED",
        "## Summary",
    ]
    assert "## fake: reports its process\n\n- load average at start (1/5/15 min): " in (
        captured.out
    )
    assert f"\n- scenario process: pid {pids[2]}, " in captured.out
    assert "\n- host speed while it ran: the same pure-Python probe (" in captured.out
    assert "1 of 2 targets met." in captured.out
    assert captured.out.rstrip().endswith("FAILED: raises, dies (errors on stderr)")
    assert "ValueError: no data for this scenario\nand a second line" in captured.err
    assert "the helper process died during 'run'" in captured.err


async def _echo(command: Command) -> Command:
    return command


def _echo_helper(pipe: Connection) -> None:
    serve_commands(pipe, _echo)


def _starts_helpers_and_waits(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    """Starts a helper, as the scenarios do, and a stray process of its own (as a
    scenario that leaks one would), writes their pids, then waits to be stopped."""
    stray = subprocess.Popen(["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with Agent(_echo_helper) as helper:
        helper.ask("ping")
        pids = Path(os.environ["BENCH_TEST_PIDS"])
        written = pids.with_suffix(".partial")
        written.write_text(json.dumps([os.getpid(), helper.pid, stray.pid]))
        written.rename(pids)
        time.sleep(600)
    raise AssertionError("not stopped")


STUCK = {"stuck": _starts_helpers_and_waits}

_BENCH = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as started from a terminal
from bench.cli import main
from tests.bench.test_scenarioprocess import STUCK
sys.exit(main(["stuck", "--stall-seconds", "0"], runners=STUCK))
"""


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_stopping_the_bench_stops_the_scenario_and_leaves_no_process(
    tmp_path: Path, stop: str
) -> None:
    pids_file = tmp_path / "pids.json"
    scenario = helper = stray = 0
    bench = subprocess.Popen(
        [sys.executable, "-c", _BENCH],
        cwd=REPO,
        env={**os.environ, "BENCH_TEST_PIDS": str(pids_file)},
        start_new_session=True,  # a job of its own, as in a shell
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: pids_file.exists() or bench.poll() is not None, "the scenario started")
        assert bench.poll() is None, bench.communicate()
        scenario, helper, stray = json.loads(pids_file.read_text())
        assert os.getpgid(scenario) == scenario != os.getpgid(bench.pid)
        if stop == "ctrl-c":
            os.killpg(bench.pid, signal.SIGINT)  # the terminal's foreground job
        else:
            bench.terminate()
        out, err = bench.communicate(timeout=60)
    finally:  # when the test fails, it leaves no process either
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
        if scenario:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(scenario, signal.SIGKILL)

    assert bench.returncode == 130, err
    assert out.startswith("# marketcast bench\n")
    assert "interrupted: the running scenario and its helpers were stopped" in err
    for pid in (scenario, helper, stray):
        _wait_for(lambda pid=pid: not _running(pid), f"process {pid} ended")


def _running(pid: int) -> bool:
    """Alive, not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll ``condition`` until it holds; ``limit`` only bounds a hang."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)
