"""The command line: the whole report is printed (scenario 5 at a tiny size), and a
scenario that fails does not stop the others, each running in a process of its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.cli import main


def test_connections_report_through_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    figures = tmp_path / "figures.json"
    argv = ["connections", "--connections", "20", "--stall-seconds", "0.3"]
    assert main([*argv, "--json", str(figures)]) == 0

    out = capsys.readouterr().out
    assert out.startswith("# marketcast bench\n\n- machine: ")
    assert "- load average at start (1/5/15 min): " in out
    assert "\n- host stalls with every core busy (" in out
    assert "uvloop: " in out
    assert "## 5. Connections: idle subscribers held, memory per connection" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table] == [
        "server",
        "marketcast",
        "raw websockets broadcast",
    ]
    assert [line.split("|")[2].strip() for line in table[1:]] == ["20", "20"]

    (result,) = json.loads(figures.read_text())["results"]
    assert result["key"] == "connections"
    assert sorted(result["figures"]) == [
        "marketcast_bytes_per_connection",
        "marketcast_connections",
        "raw_bytes_per_connection",
        "raw_connections",
    ]
    assert result["figures"]["marketcast_connections"] == 20
    assert result["figures"]["raw_connections"] == 20
    stalls = result["conditions"]["stalls"]
    assert stalls["cores"] == os.cpu_count()
    assert stalls["seconds"] == 0.3


def test_a_failing_scenario_is_reported_and_the_others_still_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    figures = tmp_path / "figures.json"
    # The first 5 frames of the spot recording hold no REST snapshot: ingest cannot run.
    argv = ["ingest", "connections", "--frames", "5", "--connections", "5", "--stall-seconds", "0"]
    assert main([*argv, "--json", str(figures)]) == 1

    captured = capsys.readouterr()
    failed = captured.out.partition("## ingest: FAILED\n\n")[2]
    assert failed.startswith("- load average at start (1/5/15 min): ")
    assert "host stalls" not in captured.out  # --stall-seconds 0: not measured
    assert "\n\nValueError: the first 5 frames of " in failed
    assert "## 5. Connections: idle subscribers held, memory per connection" in failed
    assert captured.out.rstrip().endswith("FAILED: ingest (errors on stderr)")
    assert "Traceback" in captured.err

    report = json.loads(figures.read_text())
    (ingest,) = report["errors"]
    (connections,) = report["results"]
    assert report["failed"] == [ingest["key"]] == ["ingest"]
    assert ingest["error"].startswith("ValueError: the first 5 frames of ")
    pids = {ingest["conditions"]["pid"], connections["conditions"]["pid"], os.getpid()}
    assert len(pids) == 3
