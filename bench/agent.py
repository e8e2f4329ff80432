"""Helper processes driven over a pipe: the server under test and the subscribers each
run in their own spawned process, so that each one's CPU and memory are its own and a
fresh server never inherits the memory of the previous one.

The parent (the bench's main process, which runs no event loop) sends a command tuple
and blocks for the one reply; the child runs an asyncio loop (uvloop when installed)
that keeps serving its sockets between commands.

Each scenario of ``python -m bench`` is itself such a helper (``bench/scenarioprocess.py``),
one that starts helpers of its own: it leads a process group, so that stopping it
leaves none of them behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import signal
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection, wait
from typing import Any, Self, TypeVar

T = TypeVar("T")
Command = tuple[Any, ...]
Handler = Callable[[Command], Awaitable[Command]]

REPLY_TIMEOUT = 600.0
"""Longest wait for one reply (opening 10,000 connections on a loaded box included)."""

EXIT_GRACE = 10.0
"""Seconds a helper has to exit (or to stop, when interrupted) before it is killed."""


class AgentError(RuntimeError):
    """The helper process failed a command, died, or did not answer."""


class Agent:
    """The parent's handle on one helper process.

    A ``group_leader`` helper starts processes of its own: it is not daemonic (a
    daemonic process may not have children), it leads a process group of its own, which
    holds everything it starts (so the terminal's Ctrl-C reaches only the parent, which
    passes it on with ``interrupt``), and leaving it kills whatever is left in that group.
    """

    def __init__(self, main: Callable[[Connection], None], *, group_leader: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._group_leader = group_leader
        self._process = context.Process(
            target=_helper_main, args=(main, child_end, group_leader), daemon=not group_leader
        )
        self._process.start()
        if group_leader:
            # The child sets it too: whichever runs first wins the race with exec.
            with contextlib.suppress(OSError):
                os.setpgid(self.pid, self.pid)
        child_end.close()

    @property
    def pid(self) -> int:
        pid = self._process.pid
        assert pid is not None  # started in __init__
        return pid

    @property
    def exitcode(self) -> int | None:
        """The helper's exit status once it has been left (negative: killed by that
        signal); None while it runs."""
        return self._process.exitcode

    def ask(self, *command: Any, timeout: float | None = REPLY_TIMEOUT) -> Command:
        """Send ``command`` and wait for its reply (at most ``timeout`` seconds; None:
        as long as the helper lives)."""
        self._pipe.send(command)
        if not self._pipe.poll(timeout):
            raise AgentError(f"no reply to {command[0]!r} in {timeout:g} s")
        try:
            reply: Command = self._pipe.recv()
        except EOFError as exc:
            raise AgentError(f"the helper process died during {command[0]!r}") from exc
        if reply[0] == "error":
            raise AgentError(f"{command[0]!r} failed in the helper process:\n{reply[1]}")
        return reply

    def exit(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self._pipe.send(("exit",))
        self._end()

    def interrupt(self) -> None:
        """Stop the helper as Ctrl-C would (SIGINT: it unwinds and stops its own
        helpers); kill it when it has not ended ``EXIT_GRACE`` seconds later."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
        self._end()

    def _end(self) -> None:
        """Wait for the helper to exit and kill it when it does not (or when a second
        Ctrl-C cuts the wait short); a group leader's group is killed too, before the
        leader is reaped: until then its group id cannot be reused."""
        ended = False
        try:
            ended = bool(wait([self._process.sentinel], EXIT_GRACE))
        finally:
            if not ended:
                self._process.kill()
            if self._group_leader:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
            self._process.join()
            self._pipe.close()

    def leave(self, error: type[BaseException] | None) -> None:
        """``interrupt`` when leaving on Ctrl-C (the helper may be busy with a command
        and read no ``exit``), else ``exit``."""
        if error is not None and issubclass(error, KeyboardInterrupt):
            self.interrupt()
        else:
            self.exit()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        self.leave(error)


def _helper_main(main: Callable[[Connection], None], pipe: Connection, group_leader: bool) -> None:
    """A helper's first steps: SIGINT raises ``KeyboardInterrupt`` (``interrupt`` sends
    it, even when the bench itself runs with SIGINT ignored, as a background job does),
    its own process group when it leads one, then ``main``."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if group_leader:
        os.setpgid(0, 0)
    main(pipe)


class HelperProcess:
    """Base of the parent's handles on one helper process each: spawns it running
    ``main``, sends ``start`` as its first command when given (``self.started`` is the
    reply; a failed start leaves no process behind), and makes it exit when the handle
    is left as a context manager or ``exit()`` is called (``group_leader``: see
    ``Agent``)."""

    def __init__(
        self, main: Callable[[Connection], None], *start: Any, group_leader: bool = False
    ) -> None:
        self._agent = Agent(main, group_leader=group_leader)
        self.started: Command = ()
        if start:
            try:
                self.started = self._agent.ask(*start)
            except BaseException as exc:
                self._agent.leave(type(exc))
                raise

    @property
    def pid(self) -> int:
        return self._agent.pid

    def exit(self) -> None:
        self._agent.exit()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        self._agent.leave(error)


async def started(ready: asyncio.Future[T], task: asyncio.Task[None]) -> T:
    """The value a server hands to its ``on_ready`` (``ready``'s result), or what made
    ``task``, which runs it, stop before it was ready."""
    await asyncio.wait((ready, task), return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        task.result()  # raises what stopped it
        raise RuntimeError("the server stopped before it was ready")
    return ready.result()


def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to its hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve_commands(pipe: Connection, handler: Handler) -> None:
    """The child's main loop: answer each command with ``handler`` until ``exit`` (which
    the handler also gets, to clean up; so does SIGINT, which ends it quietly). Raises
    the open-files limit first: helpers hold thousands of sockets. After the first
    command (a server's start) the heap is kept settled (``app.heap``), as ``marketcast run``
    does once ready, in every helper alike: servers, floors and clients."""
    from app.heap import HeapKeeper
    from app.loop import loop_factory

    raise_open_files_limit()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[Command] = asyncio.Queue()

        def receive() -> None:
            try:
                commands.put_nowait(pipe.recv())
            except EOFError:  # the parent is gone
                loop.remove_reader(pipe.fileno())
                commands.put_nowait(("exit",))

        loop.add_reader(pipe.fileno(), receive)
        # uvloop makes a watched descriptor non-blocking; a large reply must not fail
        # with EAGAIN halfway through, so sends block again.
        os.set_blocking(pipe.fileno(), True)
        heap = HeapKeeper()
        reclaiming: asyncio.Task[None] | None = None
        try:
            while (command := await commands.get())[0] != "exit":
                try:
                    reply = await handler(command)
                except Exception:
                    reply = ("error", traceback.format_exc())
                if reclaiming is None:  # as `marketcast run` does once it is ready
                    heap.start()
                    reclaiming = loop.create_task(heap.run())
                pipe.send(reply)
        finally:
            heap.stop()
            loop.remove_reader(pipe.fileno())
            await handler(("exit",))

    # SIGINT cancels serve(), which cleans up; then the runner raises KeyboardInterrupt.
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        runner.run(serve())
