"""Venue-neutral synthetic markets for the built-in exchange simulators.

A ``SimulatedBook`` is the *true* L2 book of one simulated symbol: a seeded random
process that places, modifies, trades through and cancels price levels, keeping
``levels`` levels per side on the symbol's tick grid, never crossed. Each ``step``
returns the changed levels with absolute quantities (0 deletes) and the range of
update ids it consumed, one id per level change, so a venue adapter can publish the
step in that venue's wire format and serve full snapshots at the current id.
``DiffWindow`` coalesces consecutive steps into one message, the way venues batch
depth updates per push interval (Binance ``@depth@100ms``).

Prices and quantities leave this module as ``book.fixed`` integers (``Level``); the
simulated venues (``feeds.simulator.venue.LoopbackVenue``) format them as their
exchange does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from sortedcontainers import SortedDict

from book.fixed import SCALE_DIGITS, parse_fixed
from book.snapshot import Level
from feeds.metadata import TradingStatus
from feeds.symbols import split_concatenated

_MAX_OPS_PER_STEP = 4
_MODIFY_DEPTH_MEAN = 6.0
"""Mean depth (levels from the touch) of a size change: activity clusters at the top."""
_MAX_LEVELS_TRADED_THROUGH = 2
# Cumulative odds of each kind of order-book event in a step.
_P_MODIFY = 0.50
_P_IMPROVE = 0.65
_P_TRADE = 0.80
_P_CANCEL = 0.90


@dataclass(frozen=True, slots=True)
class SimSymbol:
    """One simulated instrument, named and quoted as the venue does.

    ``price`` (start price), ``tick``, ``lot`` and ``mean_qty`` (mean level size) are
    exact decimal text; ``price`` must lie on the tick grid. ``max_gap_ticks`` bounds
    the distance between neighbouring levels (sparse books use larger gaps).
    ``price_decimals``/``qty_decimals`` are the decimals the venue prints (Binance pads
    to 8: ``"61737.63000000"``). ``base``/``quote`` are the assets the venue's metadata
    names (read from ``symbol`` when empty: ``BTC-USDT``, ``BTC/USD``, ``BTCUSDT``), and
    ``status`` whether it trades. Invalid values raise ``ValueError``.
    """

    symbol: str
    price: str
    tick: str
    lot: str
    mean_qty: str
    max_gap_ticks: int = 3
    price_decimals: int = 8
    qty_decimals: int = 8
    base: str = ""
    quote: str = ""
    status: TradingStatus = TradingStatus.TRADING

    def __post_init__(self) -> None:
        if not (self.base and self.quote):
            base, quote = _assets(self.symbol)
            object.__setattr__(self, "base", self.base or base)
            object.__setattr__(self, "quote", self.quote or quote)
        price, tick, lot, mean_qty = (
            parse_fixed(text) for text in (self.price, self.tick, self.lot, self.mean_qty)
        )
        if not self.symbol:
            raise ValueError("symbol must not be empty")
        if tick <= 0 or lot <= 0:
            raise ValueError(f"{self.symbol}: tick and lot must be positive")
        if price <= 0 or price % tick:
            raise ValueError(f"{self.symbol}: price {self.price} is not a positive tick multiple")
        if mean_qty < lot:
            raise ValueError(f"{self.symbol}: mean_qty must be at least one lot")
        if self.max_gap_ticks < 1:
            raise ValueError(f"{self.symbol}: max_gap_ticks must be at least 1")
        for name, step, decimals in (
            ("tick", tick, self.price_decimals),
            ("lot", lot, self.qty_decimals),
        ):
            if not 0 <= decimals <= SCALE_DIGITS or step % 10 ** (SCALE_DIGITS - decimals):
                raise ValueError(f"{self.symbol}: {name} does not fit {decimals} decimals")


def _assets(symbol: str) -> tuple[str, str]:
    """(base, quote) spelled in ``symbol``; ("", "") when it does not say."""
    for separator in ("-", "/"):
        if separator in symbol:
            base, quote, *_ = symbol.split(separator)
            return base, quote
    try:
        base, quote = split_concatenated(symbol).split("-")
    except ValueError:
        return "", ""
    return base, quote


@dataclass(frozen=True, slots=True)
class BookDiff:
    """Absolute level changes covering update ids ``first_update_id..last_update_id``.

    A quantity of 0 deletes the level (possibly one that a later change in the same
    range had created). Bids are best first (descending), asks ascending.
    """

    first_update_id: int
    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """The whole (or top-N) book as of ``update_id``; bids descending, asks ascending."""

    update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


class _Side:
    """One side of the true book in grid units: tick index -> size in lots."""

    __slots__ = ("is_bid", "levels", "changes")

    def __init__(self, *, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.levels: SortedDict = SortedDict()
        self.changes: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.levels)

    def index_at(self, depth: int) -> int:
        """Tick index of the level ``depth`` levels from the touch (0 = best). O(log n)."""
        keys = self.levels.keys()
        return int(keys[-1 - depth] if self.is_bid else keys[depth])

    def worst(self) -> int:
        return self.index_at(len(self.levels) - 1)

    def away(self, index: int, ticks: int) -> int:
        """The index ``ticks`` further from the touch than ``index``."""
        return index - ticks if self.is_bid else index + ticks

    def top(self, depth: int) -> list[tuple[int, int]]:
        """Best ``depth`` levels, best first. O(depth)."""
        levels = self.levels
        keys = reversed(levels) if self.is_bid else iter(levels)
        return [(index, levels[index]) for index in islice(keys, depth)]


class SimulatedBook:
    """The true book of one simulated symbol, advanced one random step at a time.

    Every step applies 1..4 order-book events (size change near the touch, a new level
    inside the spread, a trade through the touch, a cancel, a new level in a gap),
    then trims or refills each side back to ``levels`` levels. Each level change
    consumes one update id, so a step covers ``U..u`` with ``U`` = previous ``u`` + 1.
    The random stream is seeded from ``(seed, symbol)``: equal inputs give equal
    books whatever other symbols are simulated.

    With a ``reference`` (a callable giving the price to quote around, see
    ``feeds.simulator.reference``) each step ends by keeping the best bid at least
    ``half_spread`` below it and the best ask at least ``half_spread`` above it (levels
    beyond are traded away), and by moving a touch that fell far behind up to it, so
    every venue quoting the same reference agrees on the market. ``step`` costs
    O(k log n) for k changed levels; ``snapshot`` O(limit).
    """

    __slots__ = (
        "spec",
        "levels",
        "_rng",
        "_tick",
        "_lot",
        "_mean_lots",
        "_bids",
        "_asks",
        "_update_id",
        "_ops",
        "_reference",
        "_half_spread",
        "_slack",
    )

    def __init__(
        self,
        spec: SimSymbol,
        *,
        levels: int = 100,
        seed: int | str = 0,
        first_update_id: int | None = None,
        reference: Callable[[], int] | None = None,
        half_spread: int = 0,
    ) -> None:
        if levels < 1:
            raise ValueError("levels must be at least 1")
        if half_spread < 0:
            raise ValueError("half_spread must not be negative")
        self.spec = spec
        self.levels = levels
        self._rng = random.Random(f"{seed}:{spec.symbol}")
        self._tick = parse_fixed(spec.tick)
        self._lot = parse_fixed(spec.lot)
        self._mean_lots = parse_fixed(spec.mean_qty) / self._lot
        self._bids = _Side(is_bid=True)
        self._asks = _Side(is_bid=False)
        self._update_id = (
            self._rng.randrange(10**9, 10**10) if first_update_id is None else first_update_id
        )
        self._ops = 0
        self._reference = reference
        self._half_spread = half_spread
        self._slack = max(1, half_spread // self._tick // 2)
        """How far (ticks) a touch may trail its bound before it moves up to it."""
        best_bid = parse_fixed(spec.price) // self._tick
        self._bids.levels[best_bid] = self._draw_lots()
        self._asks.levels[best_bid + self._rng.randint(1, 2)] = self._draw_lots()
        self._refill(self._bids)
        self._refill(self._asks)

    @property
    def update_id(self) -> int:
        """Id of the last change applied; a snapshot taken now is valid at this id."""
        return self._update_id

    def step(self) -> BookDiff:
        """Apply one random step and return the changed levels. O(k log n)."""
        rng = self._rng
        self._ops = 0
        self._bids.changes.clear()
        self._asks.changes.clear()
        sides = (self._bids, self._asks), (self._asks, self._bids)
        for _ in range(rng.randint(1, _MAX_OPS_PER_STEP)):
            side, other = sides[rng.random() < 0.5]
            roll = rng.random()
            if roll < _P_MODIFY:
                self._modify(side)
            elif roll < _P_IMPROVE:
                self._improve(side, other)
            elif roll < _P_TRADE:
                self._trade(side)
            elif roll < _P_CANCEL:
                self._cancel(side)
            else:
                self._insert(side)
        if self._reference is not None:
            self._follow(self._reference())
        self._refill(self._bids)
        self._refill(self._asks)
        first = self._update_id + 1
        self._update_id += self._ops
        return BookDiff(
            first,
            self._update_id,
            self._levels(sorted(self._bids.changes.items(), reverse=True)),
            self._levels(sorted(self._asks.changes.items())),
        )

    def best(self) -> tuple[Level, Level]:
        """(best bid, best ask) as fixed-point levels. O(log n)."""
        (bid,) = self._levels(self._bids.top(1))
        (ask,) = self._levels(self._asks.top(1))
        return bid, ask

    def snapshot(self, limit: int | None = None) -> DepthSnapshot:
        """The best ``limit`` levels per side (all when ``None``) at ``update_id``. O(limit)."""
        depth = self.levels if limit is None else limit
        return DepthSnapshot(
            self._update_id,
            self._levels(self._bids.top(depth)),
            self._levels(self._asks.top(depth)),
        )

    def _levels(self, grid_levels: list[tuple[int, int]]) -> tuple[Level, ...]:
        tick, lot = self._tick, self._lot
        return tuple((index * tick, lots * lot) for index, lots in grid_levels)

    def _draw_lots(self) -> int:
        return max(1, round(self._rng.expovariate(1.0 / self._mean_lots)))

    def _set(self, side: _Side, index: int, lots: int) -> None:
        if lots:
            side.levels[index] = lots
        else:
            del side.levels[index]
        side.changes[index] = lots
        self._ops += 1

    def _modify(self, side: _Side) -> None:
        """A size change, most often near the touch."""
        depth = min(int(self._rng.expovariate(1.0 / _MODIFY_DEPTH_MEAN)), len(side) - 1)
        index = side.index_at(depth)
        lots = self._draw_lots()
        self._set(side, index, lots if lots != side.levels[index] else lots + 1)

    def _improve(self, side: _Side, other: _Side) -> None:
        """A new best price inside the spread (a size change when the spread is one tick)."""
        best, opposite = side.index_at(0), other.index_at(0)
        low, high = sorted((best, opposite))
        if high - low < 2:
            self._modify(side)
            return
        self._set(side, self._rng.randint(low + 1, high - 1), self._draw_lots())

    def _trade(self, side: _Side) -> None:
        """An aggressive order: takes whole levels at the touch, then part of the next."""
        for _ in range(min(self._rng.randint(0, _MAX_LEVELS_TRADED_THROUGH), len(side) - 1)):
            self._set(side, side.index_at(0), 0)
        best = side.index_at(0)
        lots = side.levels[best]
        if lots > 1:
            self._set(side, best, self._rng.randint(1, lots - 1))
        else:
            self._modify(side)

    def _cancel(self, side: _Side) -> None:
        if len(side) < 2:
            self._modify(side)
            return
        self._set(side, side.index_at(self._rng.randrange(len(side))), 0)

    def _insert(self, side: _Side) -> None:
        """A new level in a gap between two existing ones."""
        if len(side) < 2:
            self._modify(side)
            return
        depth = self._rng.randrange(len(side) - 1)
        low, high = sorted((side.index_at(depth), side.index_at(depth + 1)))
        if high - low < 2:
            self._modify(side)
            return
        self._set(side, self._rng.randint(low + 1, high - 1), self._draw_lots())

    def _follow(self, reference: int) -> None:
        """Quote around ``reference``: best bid <= reference - half spread, best ask >=
        reference + half spread, on the tick grid and never crossed."""
        tick = self._tick
        max_bid = max(1, (reference - self._half_spread) // tick)
        min_ask = max(-(-(reference + self._half_spread) // tick), max_bid + 1)
        self._hold_behind(self._bids, max_bid)
        self._hold_behind(self._asks, min_ask)

    def _hold_behind(self, side: _Side, bound: int) -> None:
        """Trade away every level of ``side`` better than ``bound``; a touch trailing the
        bound by more than the slack is joined by a new level near it."""

        def better(index: int) -> bool:
            return index > bound if side.is_bid else index < bound

        while better(best := side.index_at(0)):
            if len(side) == 1:
                self._set(side, bound, self._draw_lots())
            self._set(side, best, 0)
        if abs(bound - side.index_at(0)) > self._slack:
            index = side.away(bound, self._rng.randint(0, self._slack // 2))
            self._set(side, index, self._draw_lots())

    def _refill(self, side: _Side) -> None:
        """Trim the far end, or extend it, back to ``levels`` levels (bids stop at tick 1)."""
        while len(side) > self.levels:
            self._set(side, side.worst(), 0)
        while len(side) < self.levels:
            index = side.away(side.worst(), self._rng.randint(1, self.spec.max_gap_ticks))
            if index < 1:
                return
            self._set(side, index, self._draw_lots())

    def _check(self) -> None:
        """Assert every invariant: level counts, positive sizes, grid prices, not crossed."""
        for side in (self._bids, self._asks):
            assert 1 <= len(side) <= self.levels, "level count out of range"
            assert all(lots > 0 for lots in side.levels.values()), "non-positive size"
            assert all(index > 0 for index in side.levels), "non-positive price"
        assert len(self._asks) == self.levels, "ask side not full"
        bid_floor = self._bids.worst() - self.spec.max_gap_ticks < 1
        assert len(self._bids) == self.levels or bid_floor, "bid side not full"
        assert self._bids.index_at(0) < self._asks.index_at(0), "book crossed"


class DiffWindow:
    """Coalesces consecutive ``BookDiff``s into one, as venues batch depth pushes.

    The result holds each touched level's last quantity and spans the first diff's
    ``first_update_id`` to the last diff's ``last_update_id``, so applying it to the
    book at *any* id inside the span gives the book at the end of the span (the
    property Binance's snapshot bridging relies on). ``add`` is O(k) for k levels.
    """

    __slots__ = ("_first", "_last", "_bids", "_asks")

    def __init__(self) -> None:
        self._first: int | None = None
        self._last = 0
        self._bids: dict[int, int] = {}
        self._asks: dict[int, int] = {}

    def add(self, diff: BookDiff) -> None:
        if self._first is None:
            self._first = diff.first_update_id
        self._last = diff.last_update_id
        self._bids.update(diff.bids)
        self._asks.update(diff.asks)

    def take(self) -> BookDiff | None:
        """The coalesced diff since the last ``take`` (``None`` if nothing changed)."""
        if self._first is None:
            return None
        diff = BookDiff(
            self._first,
            self._last,
            tuple(sorted(self._bids.items(), reverse=True)),
            tuple(sorted(self._asks.items())),
        )
        self._first = None
        self._bids.clear()
        self._asks.clear()
        return diff
