"""When a live instrument's silence means its book can no longer be trusted.

A quiet instrument is not a dead one: each instrument's threshold is learned from its
own update rate. An instrument silent for as long as ``USUAL_GAPS`` of its usual gaps
between book messages is stale, but never sooner than the venue's floor (a busy book
pausing for a second is normal) and never later than the venue's ceiling when one is
set. An instrument whose silence turned out harmless (its resync found it alive and
quiet) gets a threshold ``BACKOFF`` times longer, so a market that went quiet is not
resynced over and over.

Sans-I/O and off the hot path: the session calls ``silent`` once per watchdog pass with
each instrument's message count; all times are nanoseconds of the driver's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

SECOND_NS = 1_000_000_000

USUAL_GAPS = 20.0
"""Silent for this many usual gaps between messages: stale."""
RATE_WEIGHT = 0.2
"""Weight of the newest observation in the rate's moving average."""
BACKOFF = 4.0
"""A silence resync divides the instrument's learned rate by this."""


@dataclass(slots=True)
class _Activity:
    count: int
    """Book messages counted at the last pass that saw one."""
    last_message: int
    """When (the pass that saw) the last message."""
    rate: float = 0.0
    """Learned messages per nanosecond (0: not learned yet)."""


class InstrumentSilence:
    """Per-instrument silence thresholds of one connection. O(1) per instrument and pass.

    ``floor`` and ``ceiling`` are seconds (``ceiling`` 0: none); ``learn`` off leaves
    only the ceiling (a fixed threshold).
    """

    def __init__(self, *, floor: float, ceiling: float, learn: bool = True) -> None:
        self.floor = int(floor * SECOND_NS)
        self.ceiling = int(ceiling * SECOND_NS)
        self.learn = learn
        self._activity: dict[str, _Activity] = {}

    def silent(self, instrument: str, count: int, ts: int) -> bool:
        """Whether ``instrument`` (live, ``count`` book messages so far) has been silent
        past its threshold at ``ts``."""
        activity = self._activity.get(instrument)
        if activity is None:
            self._activity[instrument] = _Activity(count, ts)
            return False
        if count != activity.count:
            span = ts - activity.last_message
            if self.learn and span > 0:
                observed = (count - activity.count) / span
                rate = activity.rate
                activity.rate = observed if rate == 0 else rate + RATE_WEIGHT * (observed - rate)
            activity.count, activity.last_message = count, ts
            return False
        threshold = self.threshold(instrument)
        return threshold is not None and ts - activity.last_message >= threshold

    def threshold(self, instrument: str) -> int | None:
        """The instrument's current threshold in nanoseconds (``None``: never silent)."""
        activity = self._activity.get(instrument)
        rate = activity.rate if activity is not None else 0.0
        learned = max(self.floor, int(USUAL_GAPS / rate)) if self.learn and rate > 0 else None
        if self.ceiling <= 0:
            return learned
        return self.ceiling if learned is None else min(learned, self.ceiling)

    def resynced(self, instrument: str, ts: int) -> None:
        """``instrument`` was resynced for its silence: give it longer next time."""
        activity = self._activity.get(instrument)
        if activity is not None:
            activity.rate /= BACKOFF
            activity.last_message = ts
