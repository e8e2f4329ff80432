"""Shared helpers for the publish tests: a feed stand-in that drives the real registry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from book.fixed import parse_fixed
from book.l2 import L2Book
from book.registry import BookRegistry
from book.snapshot import BookSnapshot, Level
from book.status import InstrumentState, InstrumentStatus

BTC = "binance:BTC-USDT"
ETH = "binance:ETH-USDT"
KRAKEN_BTC = "kraken:BTC-USD"
INSTRUMENTS = (BTC, ETH, KRAKEN_BTC)

TS_SEND = 1_700_000_000_999_000_000
"""What the tests' injected clock always reads, so ``ts_send`` is an exact value."""


STATUS_TS = 1_700_000_000_000_000_000


def clock() -> int:
    return TS_SEND


class Feed:
    """Does what a venue feed does to the registry: one ``L2Book`` per instrument, a
    snapshot published after each whole change, status changes."""

    def __init__(self, registry: BookRegistry) -> None:
        self.registry = registry
        self._books: dict[str, L2Book] = {}

    def status(self, instrument: str, state: InstrumentState, reason: str = "synced") -> None:
        self.registry.set_status(InstrumentStatus(instrument, state, reason, STATUS_TS))

    def quote(
        self,
        instrument: str,
        bid: tuple[str, str] | None,
        ask: tuple[str, str] | None,
    ) -> BookSnapshot:
        """Replace the book with one level per side (``None`` = empty side) and publish."""
        book = self._books.setdefault(instrument, L2Book(instrument))
        book.load(_levels(bid), _levels(ask))
        seq = book.seq + 1
        snapshot = book.snapshot(ts_event=seq * 1_000, ts_recv=seq * 1_000 + 7, ts_book=seq)
        self.registry.publish(snapshot)
        return snapshot


def _levels(level: tuple[str, str] | None) -> list[Level]:
    return [] if level is None else [(parse_fixed(level[0]), parse_fixed(level[1]))]


def bbo(
    instrument: str, seq: int, bid: tuple[str, str] | None, ask: tuple[str, str] | None
) -> dict[str, object]:
    """The exact ``bbo`` wire object a ``Feed.quote`` with these values must produce."""
    return {
        "type": "bbo",
        "instrument": instrument,
        "seq": seq,
        "bid": None if bid is None else bid[0],
        "bid_qty": None if bid is None else bid[1],
        "ask": None if ask is None else ask[0],
        "ask_qty": None if ask is None else ask[1],
        "ts_event": seq * 1_000,
        "ts_recv": seq * 1_000 + 7,
        "ts_send": TS_SEND,
    }


def new_registry() -> BookRegistry:
    registry = BookRegistry()
    for instrument in INSTRUMENTS:
        registry.add_instrument(instrument)
    return registry


async def wait_until(
    condition: Callable[[], bool], *, what: str, turns: int = 10_000, pause: float = 0.001
) -> None:
    """Let the loop run until ``condition`` holds; fail (not hang) if it never does."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(pause)
    raise AssertionError(f"never happened: {what}")
