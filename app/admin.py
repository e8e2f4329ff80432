"""The admin ops' ``AdminControl`` in the server process: the feed runners."""

from __future__ import annotations

from collections.abc import Sequence

from feeds.runner import FeedRunner


class FeedAdmin:
    """Resyncs an instrument on the runner that carries it; reconnects every runner of a
    venue. O(runners)."""

    def __init__(self, runners: Sequence[FeedRunner]) -> None:
        self._runners = list(runners)

    def add(self, runners: Sequence[FeedRunner]) -> None:
        """Runners started later (instruments a metadata refresh added)."""
        self._runners += runners

    def resync(self, instrument: str, reason: str) -> bool:
        return any(runner.resync(instrument, reason) for runner in self._runners)

    def reconnect(self, venue: str, reason: str) -> bool:
        results = [runner.reconnect(reason) for runner in self._runners if runner.venue == venue]
        return any(results)
