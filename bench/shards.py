"""Scenario 3 over positions shards: what one shard's share of a profit workload costs,
and how many shards a workload needs.

A shard of ``K`` holds the positions of the accounts ``bus.positions.shard_of`` gives it
(about ``1/K`` of them) but sees every BBO change of the bus. This measures, in this
process and on the shard's real path, the CPU one shard spends per BBO change: the bus
message decoded by the follower into the registry, the ``ProfitEngine`` marking the
shard's positions of that instrument, and each watched account's frames encoded into
one bus batch (``bus.position_shard.ShardSubscriber``; the NATS write itself is left
out, it is one buffered socket write per account and tick). Every change moves both bid
and ask, and the loop yields after each one, so nothing is conflated: an upper bound.

Cost model: ``cpu per change = a + b * marks per change``, where ``a`` is the fixed cost
every shard pays for every change and ``b`` the cost per marked position; ``a`` and
``b`` are fitted from the 1- and 2-shard measurements. A shard at ``rate`` changes/s is
busy ``rate * (a + b * P / (I * K))`` of a core (``P`` positions, ``I`` instruments).
The limit it must stay under is the busy share measured the same way for the largest
workload one process held at p99 <= 50 ms on the 2-core VM (17,500 positions, 100
accounts, 50 instruments, 5,000 changes/s; docs/performance.md), so ``K`` is the least
shard count whose busy share stays below that reference.

``python -m bench.shards [--changes N]`` prints the table; it measures, so run it alone
on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass

from book.fixed import SCALE
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from book.status import InstrumentState, InstrumentStatus
from bus.codec import encode_book, encode_status
from bus.follower import Follower
from bus.position_shard import ShardSubscriber
from bus.positions import shard_of
from publish.fanout import Fanout
from publish.position import Position, PositionSide
from publish.profit import ProfitEngine

SOURCE = 1


@dataclass(frozen=True, slots=True)
class ShardLoad:
    name: str
    positions: int
    accounts: int
    instruments: int
    rate: float
    """BBO changes per second on the bus."""


DESIGN = ShardLoad("DESIGN.md", 100_000, 1_000, 100, 10_000)
REFERENCE = ShardLoad("one-process p99 limit", 17_500, 100, 50, 5_000)


@dataclass(frozen=True, slots=True)
class ShardCost:
    load: ShardLoad
    shards: int
    shard: int
    positions: int
    """Positions the shard holds."""
    accounts: int
    changes: int
    marks: int
    batches: int
    cpu_seconds: float

    @property
    def per_change(self) -> float:
        return self.cpu_seconds / self.changes

    @property
    def marks_per_change(self) -> float:
        return self.marks / self.changes

    @property
    def busy(self) -> float:
        """Share of a core the shard needs at the load's rate."""
        return self.load.rate * self.per_change


@dataclass(frozen=True, slots=True)
class CostModel:
    fixed: float
    """``a``: seconds of CPU per change, whatever the shard holds."""
    per_mark: float
    """``b``: seconds of CPU per marked position."""

    @classmethod
    def fit(cls, one: ShardCost, two: ShardCost) -> CostModel:
        """From the 1- and 2-shard measurements of one load."""
        dm = one.marks_per_change - two.marks_per_change
        per_mark = max(0.0, (one.per_change - two.per_change) / dm) if dm else 0.0
        fixed = max(0.0, one.per_change - per_mark * one.marks_per_change)
        return cls(fixed, per_mark)

    def busy(self, load: ShardLoad, shards: int) -> float:
        marks = load.positions / (load.instruments * shards)
        return load.rate * (self.fixed + self.per_mark * marks)

    def shards_needed(self, load: ShardLoad, limit: float) -> int | None:
        """The least K whose shards stay at or below ``limit`` busy (``None``: the fixed
        cost alone is above it, no K is enough)."""
        headroom = limit / load.rate - self.fixed
        if headroom <= 0:
            return None
        if self.per_mark == 0:
            return 1
        return max(1, math.ceil(load.positions / load.instruments * self.per_mark / headroom))


def _book(instrument: str, seq: int, price: int) -> BookSnapshot:
    bid, ask = price * SCALE, (price + 1) * SCALE
    return BookSnapshot(
        instrument, seq, 1, 2, 3, bid, SCALE, ask, SCALE, ((bid, SCALE),), ((ask, SCALE),)
    )


async def measure_shard(load: ShardLoad, *, shards: int, shard: int, changes: int) -> ShardCost:
    """One shard's CPU over ``changes`` BBO changes, round-robin over the instruments."""
    registry = BookRegistry()
    follower = Follower(registry, stale_after=3600.0)
    fanout = Fanout(registry, metrics_interval=None)
    engine = ProfitEngine(registry, fanout, marks_per_tick=max(1, load.positions))
    instruments = [f"sim:I{i}-USD" for i in range(load.instruments)]
    bus_seq = dict.fromkeys(instruments, 0)

    def message(instrument: str, seq: int, price: int) -> bytes:
        bus_seq[instrument] += 1
        return encode_book(
            _book(instrument, seq, price), source=SOURCE, bus_seq=bus_seq[instrument]
        )

    for instrument in instruments:
        bus_seq[instrument] += 1
        status = InstrumentStatus(instrument, InstrumentState.LIVE, "in sync", 1)
        follower.receive(encode_status(status, source=SOURCE, bus_seq=bus_seq[instrument]), 0.0)
        follower.receive(message(instrument, 1, 100), 0.0)
    held: dict[str, int] = dict.fromkeys(instruments, 0)
    accounts: set[str] = set()
    for i in range(load.positions):
        account = f"acct-{i % load.accounts}"
        if shard_of(account, shards) != shard:
            continue
        instrument = instruments[i % load.instruments]
        engine.position_opened(
            Position(
                id=f"p-{i}",
                account=account,
                instrument=instrument,
                side=PositionSide.BUY if i % 2 == 0 else PositionSide.SELL,
                qty=SCALE,
                entry_price=100 * SCALE,
                opened_ts=1,
            )
        )
        held[instrument] += 1
        accounts.add(account)
    batches = 0

    def publish(account: str, payload: bytes) -> None:
        nonlocal batches
        batches += 1

    for account in accounts:
        subscriber = ShardSubscriber(account, fanout, publish)
        engine.add(subscriber, account)
    await asyncio.sleep(0)
    payloads = [
        message(instruments[n % load.instruments], 2 + n, 101 + n // load.instruments % 2)
        for n in range(changes)
    ]
    marks = sum(held[instruments[n % load.instruments]] for n in range(changes))
    batches = 0
    start = time.process_time()
    for payload in payloads:
        follower.receive(payload, 0.0)
        await asyncio.sleep(0)  # the publish tick and the batches' flush run here
    await asyncio.sleep(0)
    cpu = time.process_time() - start
    return ShardCost(
        load, shards, shard, sum(held.values()), len(accounts), changes, marks, batches, cpu
    )


async def measure(load: ShardLoad, changes: int) -> tuple[ShardCost, ShardCost]:
    """Shard 0 of 1 and shard 0 of 2."""
    one = await measure_shard(load, shards=1, shard=0, changes=changes)
    two = await measure_shard(load, shards=2, shard=0, changes=changes)
    return one, two


def report(design: tuple[ShardCost, ShardCost], reference: ShardCost) -> list[str]:
    model = CostModel.fit(*design)
    limit = reference.busy
    lines = [
        f"{'load':<24} {'K':>2} {'positions':>9} {'marks/change':>12} "
        f"{'us/change':>10} {'us/mark':>8} {'busy':>6}",
    ]
    for cost in (reference, *design):
        per_mark = cost.cpu_seconds / cost.marks * 1e6 if cost.marks else 0.0
        lines.append(
            f"{cost.load.name:<24} {cost.shards:>2} {cost.positions:>9} "
            f"{cost.marks_per_change:>12.1f} {cost.per_change * 1e6:>10.1f} {per_mark:>8.2f} "
            f"{cost.busy:>6.0%}"
        )
    needed = model.shards_needed(DESIGN, limit)
    lines.append(
        f"model: {model.fixed * 1e6:.1f} us per change + {model.per_mark * 1e6:.2f} us per "
        f"marked position; limit {limit:.0%} of a core (the one-process p99 limit)"
    )
    for k in (1, 2, 4, 8, 16):
        lines.append(f"  DESIGN.md at K={k}: {model.busy(DESIGN, k):.0%} of a core per shard")
    lines.append(
        f"shards needed for DESIGN.md: {needed if needed is not None else 'none suffices'}"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--changes", type=int, default=20_000)
    args = parser.parse_args(argv)

    async def run() -> list[str]:
        design = await measure(DESIGN, args.changes)
        reference = await measure_shard(REFERENCE, shards=1, shard=0, changes=args.changes)
        return report(design, reference)

    print("\n".join(asyncio.run(run())))


if __name__ == "__main__":
    main()
