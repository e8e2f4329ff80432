"""Helper processes driven over a pipe: the server under test and the subscribers each
run in their own spawned process, so that each one's CPU and memory are its own and a
fresh server never inherits the memory of the previous one.

The parent (the bench's main process, which runs no event loop) sends a command tuple
and blocks for the one reply; the child runs an asyncio loop (uvloop when installed)
that keeps serving its sockets between commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any, Self, TypeVar

T = TypeVar("T")
Command = tuple[Any, ...]
Handler = Callable[[Command], Awaitable[Command]]

REPLY_TIMEOUT = 600.0
"""Longest wait for one reply (opening 10,000 connections on a loaded box included)."""


class AgentError(RuntimeError):
    """The helper process failed a command, died, or did not answer."""


class Agent:
    """The parent's handle on one helper process."""

    def __init__(self, main: Callable[[Connection], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(target=main, args=(child_end,), daemon=True)
        self._process.start()
        child_end.close()

    def ask(self, *command: Any) -> Command:
        """Send ``command`` and wait for its reply."""
        self._pipe.send(command)
        if not self._pipe.poll(REPLY_TIMEOUT):
            raise AgentError(f"no reply to {command[0]!r} in {REPLY_TIMEOUT:g} s")
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
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._pipe.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *_: object) -> None:
        self.exit()


class HelperProcess:
    """Base of the parent's handles on one helper process each: spawns it running
    ``main``, sends ``start`` as its first command when given (``self.started`` is the
    reply; a failed start leaves no process behind), and makes it exit when the handle
    is left as a context manager or ``exit()`` is called."""

    def __init__(self, main: Callable[[Connection], None], *start: Any) -> None:
        self._agent = Agent(main)
        self.started: Command = ()
        if start:
            try:
                self.started = self._agent.ask(*start)
            except BaseException:
                self._agent.exit()
                raise

    def exit(self) -> None:
        self._agent.exit()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.exit()


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
    the handler also gets, to clean up). Raises the open-files limit first: helpers
    hold thousands of sockets."""
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
        try:
            while (command := await commands.get())[0] != "exit":
                try:
                    reply = await handler(command)
                except Exception:
                    reply = ("error", traceback.format_exc())
                pipe.send(reply)
        finally:
            loop.remove_reader(pipe.fileno())
            await handler(("exit",))

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve())
