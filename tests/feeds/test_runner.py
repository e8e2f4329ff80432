"""The feed runner's own task handling (its behaviour against each venue is in
``tests/feeds/test_conformance.py``)."""

from __future__ import annotations

import asyncio

import pytest

from feeds.runner import _cancelled


async def test_stopping_a_runner_while_it_cancels_a_connection_is_not_swallowed() -> None:
    """A runner cancels the old connection after a rotation; if the runner itself is
    stopped meanwhile, it must stop, not go on serving (it used to hang shutdown)."""
    release = asyncio.Event()

    async def connection() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # closing the socket takes a while
            raise

    old = asyncio.create_task(connection())
    await asyncio.sleep(0)
    owner = asyncio.create_task(_cancelled(old))
    await asyncio.sleep(0)
    owner.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert old.cancelled()


async def test_cancelling_a_connection_waits_for_it_whatever_it_ends_with() -> None:
    async def failing_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise OSError("connection reset") from None

    task = asyncio.create_task(failing_on_cancel())
    await asyncio.sleep(0)
    await _cancelled(task)
    assert task.done() and isinstance(task.exception(), OSError)
