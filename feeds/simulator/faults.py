"""The faults every built-in simulated venue can be told to inject, and their counters.

One ``Fault`` enum serves every venue (it names the ``--fault`` flags of ``marketcast
simulate``); each simulator says which of them it can inject (``supported_faults``),
because not every exchange has a checksum, a sequence restart or a shutdown notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Fault(StrEnum):
    """A fault a running simulator can inject (``LoopbackVenue.inject``)."""

    DROP = "drop"
    """The next book message of an instrument is lost: a gap (or, with no sequence
    numbers, a book that its checksum proves wrong)."""
    CHECKSUM = "checksum"
    """The next book message of an instrument carries a wrong checksum."""
    RESTART = "restart"
    """An instrument's sequence numbers restart, as after the venue's maintenance: not
    a fault for a handler that follows the venue's documented rules."""
    DISCONNECT = "disconnect"
    """Every connection is aborted (no close frame)."""
    SILENCE = "silence"
    """No market data for a while; connections stay open and control is answered."""
    MALFORMED = "malformed"
    """One truncated-JSON frame to every connection."""
    ERROR = "error"
    """One unsolicited venue error message to every connection."""
    SHUTDOWN = "shutdown"
    """The venue's notice that it will soon close the connections."""


INSTRUMENT_FAULTS = frozenset({Fault.DROP, Fault.CHECKSUM, Fault.RESTART})
"""Faults that hit one instrument (``inject(fault, symbol=..)``; every one by default)."""


@dataclass(frozen=True, slots=True)
class FaultCounters:
    """What a simulator injected so far.

    ``dropped``: book messages withheld (Coinbase: one per connection that lost one);
    ``corrupted_checksums``: messages sent with a wrong checksum; ``restarts``: sequence
    restarts; ``unsolicited_snapshots``: snapshots pushed to existing subscribers (Bybit
    does that at any time); ``disconnected``: connections aborted; ``silences``: silence
    windows opened; ``malformed``/``errors``/``shutdown_notices``: frames sent, one per
    connected client.
    """

    dropped: int = 0
    corrupted_checksums: int = 0
    restarts: int = 0
    unsolicited_snapshots: int = 0
    disconnected: int = 0
    silences: int = 0
    malformed: int = 0
    errors: int = 0
    shutdown_notices: int = 0
