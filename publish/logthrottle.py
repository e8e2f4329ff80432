"""Rate limits on repeated log lines per client, so one misbehaving client cannot flood
the log (or the disk under it) with the same warning or traceback.

``RepeatThrottle`` is a ``logging.Filter``: per (client address, logger, message
template) it lets ``burst`` records through per ``interval`` seconds, drops the rest, and
says how many it dropped on the next record it lets through. Records that name no client
pass untouched. websockets' loggers attach the connection as ``record.websocket``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

WEBSOCKETS_LOGGERS = ("websockets.server", "websockets.protocol")


class RepeatThrottle(logging.Filter):
    """At most ``burst`` records per (client, logger, message) every ``interval`` seconds.
    O(1) per record; at most ``max_keys`` keys are kept (the oldest window is forgotten
    first)."""

    def __init__(
        self,
        *,
        burst: int = 5,
        interval: float = 60.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[tuple[str, str, str], list[float | int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        client = client_of(record)
        if client is None:
            return True
        key = (client, record.name, str(record.msg))
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self._interval:
            dropped = 0 if window is None else int(window[2])
            if len(self._windows) >= self._max_keys:
                del self._windows[next(iter(self._windows))]
            self._windows[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} (and {dropped} more like it from {client} dropped)"
            return True
        if window[1] < self._burst:
            window[1] += 1
            return True
        window[2] += 1
        return False


def client_of(record: logging.LogRecord) -> str | None:
    """The client address a record is about (websockets' connection), if any."""
    connection = getattr(record, "websocket", None)
    address = getattr(connection, "remote_address", None)
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None


_installed: RepeatThrottle | None = None


def throttle_websockets_logs() -> RepeatThrottle:
    """Install one ``RepeatThrottle`` on websockets' server loggers (idempotent)."""
    global _installed
    if _installed is None:
        _installed = RepeatThrottle()
        for name in WEBSOCKETS_LOGGERS:
            logging.getLogger(name).addFilter(_installed)
    return _installed
