"""Sleeping until a deadline to the tens of microseconds, where the event loop's timers
count whole milliseconds.

uvloop (libuv) keeps its timers in whole milliseconds of a clock it reads once per turn
of the loop. A 5 ms sleep begun part-way through a millisecond, or late in a long turn,
ends anywhere from about 4 to 6 ms later: the storage flusher's 5 ms windows closed at
p50 5.0, p90 5.9 and p99 6.2 ms after their first row, even at 1,000 rows/s with the loop
mostly idle. So a window was a millisecond short as often as a millisecond long, and
every acknowledgement that waits for one (``position.open``) carried that millisecond in
its tail.

``DeadlineTimer`` wakes the loop at a ``time.monotonic_ns()`` deadline instead: on Linux
through a timerfd (``CLOCK_MONOTONIC``, the clock ``time.monotonic_ns`` reads, armed with
the absolute deadline) that the loop watches like a socket, so the wake-up comes when
the kernel's timer fires, not at the loop's next whole millisecond. Where no timerfd can
be made (another system, a loop that cannot watch descriptors) it falls back to
``asyncio.sleep``. Either way a sleep never ends before its deadline. A timer serves one
sleeper at a time, on the loop it was first used on; ``close`` releases its descriptor.

Cost: one ``timerfd_settime`` and one ``read`` per sleep (a few µs), no thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import time
from typing import Protocol

_NS_PER_SECOND = 1_000_000_000
_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _TimerFd(Protocol):
    """A timerfd: its descriptor, and arming it for an absolute deadline (0 disarms)."""

    fd: int

    def arm(self, deadline_ns: int) -> None: ...


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _LibcTimerFd:
    """A timerfd through libc (Python before 3.13 has no ``os.timerfd_create``)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self.fd: int = fd

    def arm(self, deadline_ns: int) -> None:
        value = _Timespec(deadline_ns // _NS_PER_SECOND, deadline_ns % _NS_PER_SECOND)
        spec = _Itimerspec(_Timespec(0, 0), value)
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))


class _OsTimerFd:
    """A timerfd through ``os`` (Python 3.13 and later)."""

    def __init__(self) -> None:
        self.fd: int = os.timerfd_create(  # type: ignore[attr-defined,unused-ignore]
            time.CLOCK_MONOTONIC,
            flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC,  # type: ignore[attr-defined,unused-ignore]
        )

    def arm(self, deadline_ns: int) -> None:
        os.timerfd_settime_ns(  # type: ignore[attr-defined,unused-ignore]
            self.fd,
            flags=os.TFD_TIMER_ABSTIME,  # type: ignore[attr-defined,unused-ignore]
            initial=deadline_ns,
        )


def _make_timerfd() -> _TimerFd | None:
    """A timerfd on ``CLOCK_MONOTONIC``, or ``None`` where there is none to be had."""
    if not sys.platform.startswith("linux") or time.get_clock_info("monotonic").implementation != (
        "clock_gettime(CLOCK_MONOTONIC)"
    ):
        return None
    try:
        return _OsTimerFd() if hasattr(os, "timerfd_create") else _LibcTimerFd()
    except (OSError, AttributeError):
        return None


class DeadlineTimer:
    """Sleeps until ``time.monotonic_ns()`` deadlines; see the module docstring."""

    def __init__(self) -> None:
        self._timerfd: _TimerFd | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._fallback = False

    @property
    def precise(self) -> bool:
        """Wakes through a timerfd (once used: until then, whether it will is not known)."""
        return self._timerfd is not None

    async def sleep_until(self, deadline_ns: int) -> None:
        """Return once ``time.monotonic_ns()`` has reached ``deadline_ns`` (at once if it
        has: no yield to the loop then). One sleeper at a time. O(1)."""
        delay_ns = deadline_ns - time.monotonic_ns()
        if delay_ns <= 0:
            return
        if self._waiter is not None:
            raise RuntimeError("a DeadlineTimer serves one sleeper at a time")
        loop = asyncio.get_running_loop()
        if not self._watching(loop):
            # uvloop's timers may end a sleep up to a millisecond early: sleep again
            # until the clock says the deadline is reached.
            left = delay_ns
            while left > 0:  # noqa: ASYNC110 - a deadline on a clock, not an event
                await asyncio.sleep(left / _NS_PER_SECOND)
                left = deadline_ns - time.monotonic_ns()
            return
        assert self._timerfd is not None
        self._waiter = loop.create_future()
        try:
            self._timerfd.arm(deadline_ns)
            await self._waiter
        finally:
            self._waiter = None
            self._timerfd.arm(0)  # disarmed: a cancelled sleep leaves no expiry behind

    def close(self) -> None:
        """Release the descriptor; a later sleep makes a new one."""
        timerfd, self._timerfd = self._timerfd, None
        if timerfd is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(timerfd.fd)
        self._loop = None
        os.close(timerfd.fd)

    def _watching(self, loop: asyncio.AbstractEventLoop) -> bool:
        """The timerfd is watched by ``loop`` (made on first use); False: fall back."""
        if self._fallback:
            return False
        if self._timerfd is not None:
            if loop is self._loop:
                return True
            self.close()  # first used on a loop that is gone: start over on this one
        timerfd = _make_timerfd()
        if timerfd is None:
            self._fallback = True
            return False
        try:
            loop.add_reader(timerfd.fd, self._expired)
        except (NotImplementedError, OSError):  # a loop that cannot watch descriptors
            os.close(timerfd.fd)
            self._fallback = True
            return False
        self._timerfd, self._loop = timerfd, loop
        return True

    def _expired(self) -> None:
        assert self._timerfd is not None
        try:
            os.read(self._timerfd.fd, 8)  # the expiries since it was armed
        except BlockingIOError:  # re-armed or disarmed since it fired: not this sleep's
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
