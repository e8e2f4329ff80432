"""The messages waiting for the consumer: latest per key, never older than one yielded.

Sans-I/O. A message with a key (an instrument's ``bbo``, a ``book`` at one depth, a
symbol's ``nbbo``, an instrument's ``status``, a position's ``profit``, an account's
``profit_total``, ``metrics``) replaces a waiting one of the same key and moves to the back,
so a consumer that falls behind gets the latest state per key in the order the latest
values arrived, and memory stays bounded by the keys subscribed (the server conflates
the same way). ``Disconnected``/``Reconnected`` and unknown messages are never replaced.

A message carrying a ``seq`` lower than the last one accepted for its key is dropped: a
key's ``seq`` never goes back on the consumer's side, also across reconnects.
"""

from __future__ import annotations

from itertools import count

from marketcast.messages import (
    Bbo,
    Book,
    Message,
    Metrics,
    Nbbo,
    Profit,
    ProfitClosed,
    ProfitTotal,
    Status,
)

Key = tuple[str, ...] | int
"""A message's conflation key; an ``int`` (a serial number) for messages without one."""


class Inbox:
    """``put`` as messages arrive, ``pop`` to consume. Both O(1)."""

    def __init__(self) -> None:
        self._waiting: dict[Key, Message] = {}
        self._last_seq: dict[Key, int] = {}
        self._serials = count()

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, message: Message) -> bool:
        """Queue ``message`` (replacing the waiting one of its key); False if dropped
        because its ``seq`` is below one already accepted for its key."""
        named = key_of(message)
        key: Key = next(self._serials) if named is None else named
        seq = getattr(message, "seq", None)
        if seq is not None:
            last = self._last_seq.get(key)
            if last is not None and seq < last:
                return False
            self._last_seq[key] = seq
        self._waiting.pop(key, None)
        self._waiting[key] = message
        return True

    def pop(self) -> Message | None:
        """The oldest waiting message, or ``None``."""
        if not self._waiting:
            return None
        key = next(iter(self._waiting))
        return self._waiting.pop(key)


def key_of(message: Message) -> tuple[str, ...] | None:
    """What ``message`` is the latest value of, or ``None`` for one-off messages."""
    match message:
        case Bbo(instrument=instrument):
            return ("bbo", instrument)
        case Book(instrument=instrument, depth=depth):
            return ("book", instrument, str(depth))
        case Nbbo(symbol=symbol):
            return ("nbbo", symbol)
        case Status(instrument=instrument):
            return ("status", instrument)
        case (
            Profit(account=account, position_id=position_id)
            | ProfitClosed(account=account, position_id=position_id)
        ):
            return ("profit", account, position_id)
        case ProfitTotal(account=account):
            return ("profit_total", account)
        case Metrics():
            return ("metrics",)
    return None
