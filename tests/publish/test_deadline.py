"""A ``DeadlineTimer`` sleep never ends before its deadline, under asyncio's loop and
uvloop's, wherever in a turn of the loop it begins; a cancelled sleep leaves no expiry
behind; the timer follows the loop it is used on and gives its descriptor back; where
no timerfd can be made it falls back to ``asyncio.sleep`` and is still never early."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

import publish.deadline
from publish.deadline import DeadlineTimer

pytestmark = pytest.mark.timeout(20)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "asyncio": None,
    "uvloop": uvloop.new_event_loop,
}
LINUX = sys.platform.startswith("linux")


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


def busy(seconds: float) -> None:
    """Hold the loop, as a long turn of callbacks does."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def early_wakeups(timer: DeadlineTimer, sleeps: int) -> list[int]:
    """How far before its deadline each of ``sleeps`` 5 ms sleeps ended (ns; none is
    expected), each begun at another point of a millisecond and after a turn of the loop
    held for up to 1.5 ms."""
    early = []
    for n in range(sleeps):
        await asyncio.sleep(0)
        busy(n % 4 * 0.0005)
        deadline = time.monotonic_ns() + 5_000_000
        await timer.sleep_until(deadline)
        woke = time.monotonic_ns()
        if woke < deadline:
            early.append(deadline - woke)
    return early


@pytest.mark.parametrize("loop", LOOPS)
def test_a_sleep_never_ends_before_its_deadline(loop: str) -> None:
    async def main() -> None:
        timer = DeadlineTimer()
        try:
            assert await early_wakeups(timer, 40) == []
            assert timer.precise is LINUX
        finally:
            timer.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_deadline_passed_returns_without_yielding_to_the_loop(loop: str) -> None:
    async def main() -> None:
        timer = DeadlineTimer()
        ran: list[bool] = []
        asyncio.get_running_loop().call_soon(ran.append, True)
        await timer.sleep_until(time.monotonic_ns() - 1)
        assert ran == []
        timer.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancelled_sleep_leaves_no_expiry_for_the_next(loop: str) -> None:
    async def main() -> None:
        timer = DeadlineTimer()
        try:
            sleeper = asyncio.create_task(timer.sleep_until(time.monotonic_ns() + 5_000_000))
            await asyncio.sleep(0.001)
            sleeper.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sleeper
            await asyncio.sleep(0.010)  # the cancelled sleep's deadline has passed
            deadline = time.monotonic_ns() + 20_000_000
            await timer.sleep_until(deadline)  # a stale expiry would end it at once
            assert time.monotonic_ns() >= deadline
        finally:
            timer.close()

    run_on(loop, main)


def test_one_sleeper_at_a_time() -> None:
    async def main() -> None:
        timer = DeadlineTimer()
        first = asyncio.create_task(timer.sleep_until(time.monotonic_ns() + 50_000_000))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one sleeper"):
            await timer.sleep_until(time.monotonic_ns() + 50_000_000)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        timer.close()

    run_on("uvloop", main)


@pytest.mark.skipif(not LINUX, reason="a timerfd is Linux's")
def test_the_timer_gives_its_descriptor_back_and_follows_the_loop() -> None:
    timer = DeadlineTimer()
    before = open_descriptors()

    async def sleep_once() -> None:
        await timer.sleep_until(time.monotonic_ns() + 1_000_000)
        assert timer.precise

    run_on("uvloop", sleep_once)  # that loop is closed now; its descriptor is still held
    assert open_descriptors() == before + 1
    run_on("asyncio", sleep_once)  # another loop: a descriptor of its own, the first closed
    assert open_descriptors() == before + 1
    timer.close()
    assert open_descriptors() == before
    timer.close()  # twice is harmless


@pytest.mark.parametrize("loop", LOOPS)
def test_without_a_timerfd_it_falls_back_and_is_never_early(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish.deadline, "_make_timerfd", lambda: None)

    async def main() -> None:
        timer = DeadlineTimer()
        assert await early_wakeups(timer, 20) == []
        assert not timer.precise
        timer.close()

    run_on(loop, main)
