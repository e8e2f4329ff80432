"""Waiting for a condition in async tests, without timed assertions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(condition: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    """Wait until ``condition`` holds; fail naming ``what`` if it never does.

    ``limit`` only bounds a hang: nothing asserts how fast the condition came true.
    """
    try:
        async with asyncio.timeout(limit):
            # Polling: the conditions are on other components' state, with no event to await.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def eventually_async(
    condition: Callable[[], Awaitable[bool]], what: str, limit: float = 20.0
) -> None:
    """``eventually`` for a condition that must be awaited (a query on storage)."""
    try:
        async with asyncio.timeout(limit):
            while not await condition():  # noqa: ASYNC110 (polling storage)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def within(awaitable: Awaitable[T], what: str, limit: float = 30.0) -> T:
    """Await ``awaitable`` (a process's exit, a socket's next frame); fail naming ``what``
    if it has not come within ``limit``: a hang fails clearly instead of hanging the run.

    Like ``eventually``, ``limit`` only bounds a hang, generously: never a speed check.
    """
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            return await awaitable
    except TimeoutError:
        if not deadline.expired():
            raise  # the awaited thing's own timeout, not ours
        raise AssertionError(f"never happened within {limit:g}s: {what}") from None
