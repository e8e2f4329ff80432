"""Each scenario of ``python -m bench`` in a fresh process of its own.

Run one after another in one process, the scenarios shared it: a full run grew it to
6.3 GB and kept most of a core busy with the data of scenarios long finished, which
showed in the figures of the scenarios that measure inside that process (storage's
SQLite flush p99: 79 ms in a full run, 6 ms alone). So each scenario runs in a fresh
spawned process that leads a process group holding every helper it starts; the bench's
main process waits on a pipe meanwhile, idle, and keeps only what each one hands back
(its tables and figures) to print the report.

A scenario that raises, or whose process dies, is a ``ScenarioFailure`` and the next
one still runs. Ctrl-C (SIGTERM and SIGHUP too, under ``stop_signals_interrupt``)
interrupts the running scenario's process, which stops its helpers as it unwinds;
whatever is left of its group is killed, so no process outlives the bench.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType

from bench.agent import AgentError, HelperProcess
from bench.hostspeed import HostSpeedProbe
from bench.report import Progress, ScenarioConditions, ScenarioResult

Runner = Callable[[argparse.Namespace, Progress], ScenarioResult]
"""A scenario: the command line's options in, what it measured out. Handed to the
scenario's process by reference, so a module-level function (importable there)."""


@dataclass(frozen=True, slots=True)
class ScenarioFailure:
    """A scenario that raised, or whose process died: ``error`` is the report's one
    line, ``details`` the traceback (or how the process ended), printed on stderr."""

    key: str
    error: str
    details: str
    conditions: ScenarioConditions | None = None

    def render(self) -> str:
        out = [f"## {self.key}: FAILED", ""]
        if self.conditions is not None:
            out += [self.conditions.render(), ""]
        return "\n".join([*out, self.error, ""])

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "error": self.error,
            "conditions": None if self.conditions is None else self.conditions.to_json(),
        }


class ScenarioProcess(HelperProcess):
    """A fresh process running one scenario (blocking calls): it measures the
    conditions it starts under (``conditions``) before ``run`` runs the scenario."""

    def __init__(self, key: str, runner: Runner, args: argparse.Namespace, started: float):
        self.key = key
        super().__init__(_scenario_main, "start", runner, args, started, group_leader=True)
        self.conditions: ScenarioConditions = self.started[1]

    def run(self) -> ScenarioResult | ScenarioFailure:
        """Run the scenario, however long it takes (a full fanout: many minutes)."""
        reply = self._agent.ask("run", timeout=None)
        if reply[0] == "done":
            result: ScenarioResult = reply[1]
            return result
        _, error, details = reply
        return ScenarioFailure(self.key, error, details, self.conditions)

    @property
    def exitcode(self) -> int | None:
        return self._agent.exitcode


def run_in_fresh_process(
    key: str, runner: Runner, args: argparse.Namespace, progress: Progress
) -> ScenarioResult | ScenarioFailure:
    """Run one scenario in a fresh process: what it measured (with how fast the host
    ran meanwhile, ``bench.hostspeed``), or why it failed. Progress lines keep counting
    from ``progress``'s start."""
    try:
        process = ScenarioProcess(key, runner, args, progress.started)
    except AgentError as exc:
        return ScenarioFailure(key, f"{type(exc).__name__}: {_last_line(str(exc))}", str(exc))
    with process:
        try:
            with HostSpeedProbe() as probe:
                outcome = process.run()
        except AgentError as exc:
            lost = str(exc)
        else:
            if isinstance(outcome, ScenarioResult):
                outcome.host = probe.result()
            return outcome
    # Left (and reaped) only now: its exit status is known.
    return ScenarioFailure(
        key, f"the scenario process died ({_how_ended(process.exitcode)})", lost, process.conditions
    )


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``KeyboardInterrupt``, as Ctrl-C does, while inside: a
    scenario's process group is not the terminal's, so a hangup does not reach it, and
    the bench's main process must stop it before it goes (main thread only)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _scenario_main(pipe: Connection) -> None:
    """The scenario's process: ``start`` (its conditions), ``run``, then ``exit``."""
    # KeyboardInterrupt: the bench stops it (its helpers were stopped while unwinding);
    # EOFError: the bench is gone.
    with contextlib.suppress(KeyboardInterrupt, EOFError):
        try:
            _, runner, args, started = pipe.recv()  # unpickles the runner: may fail
            conditions = ScenarioConditions.current(args.stall_seconds)
        except Exception:
            pipe.send(("error", traceback.format_exc()))
            return
        pipe.send(("started", conditions))
        pipe.recv()  # ("run",)
        pipe.send(_outcome(runner, args, Progress(started=started), conditions))
        pipe.recv()  # ("exit",)


def _outcome(
    runner: Runner, args: argparse.Namespace, progress: Progress, conditions: ScenarioConditions
) -> tuple[object, ...]:
    """The reply to ``run``: ``("done", result)`` or ``("failed", error, traceback)``."""
    try:
        result = runner(args, progress)
    except Exception as exc:
        progress.done()
        message = str(exc).splitlines()
        error = type(exc).__name__ + (f": {message[0]}" if message else "")
        return ("failed", error, traceback.format_exc())
    result.conditions = conditions
    return ("done", result)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _how_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"
