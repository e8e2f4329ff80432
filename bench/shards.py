"""Scenario 3 over positions shards: what one shard's share of a profit workload costs,
and how many shards a workload needs.

A shard of ``K`` holds the positions of the accounts ``bus.positions.shard_of`` gives it
(about ``1/K`` of them) but sees every BBO change of the bus. The positions are spread
as in the profit scenario (``bench.holdings``: each account goes round the
instruments), so a change touches every account of the shard that holds its
instrument, and each of them publishes a batch. This measures, in this
process and on the shard's real path, the CPU one shard spends per BBO change: the bus
message decoded by the follower into the registry, the ``ProfitEngine`` marking the
shard's positions of that instrument, and each watched account's frames encoded into
one bus batch (``bus.position_shard.ShardSubscriber``; the NATS write itself is left
out, it is one buffered socket write per account and tick). Every change moves both bid
and ask, and the loop yields after each one, so nothing is conflated: an upper bound.

Cost model: ``cpu per change = a + b * marks per change``, where ``a`` is the fixed cost
every shard pays for every change and ``b`` the cost per marked position; ``a`` and
``b`` are fitted from the 1- and 2-shard measurements (``b`` also carries the batch of
each account a change touches: both scale as ``1/K``). A shard at ``rate`` changes/s is
busy ``rate * (a + b * P / (I * K))`` of a core (``P`` positions, ``I`` instruments).
The limit it must stay under is the busy share measured the same way for the largest
workload one process held at p99 <= 50 ms on the 2-core AMD EPYC VM (5,000 positions,
100 accounts, 50 instruments, 5,000 changes/s, positions spread by ``bench.holdings``;
the full run of 2026-12-04 in docs/performance.md), so ``K`` is the least shard count
whose busy share stays below that reference.

The scenario ``shards`` of ``python -m bench`` (``--shard-changes N``); ``python -m
bench.shards [--changes N]`` runs it alone. It measures, so run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass

from bench.holdings import Spread, holding
from bench.report import Progress, ScenarioResult, Table, number
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


FULL_SIZE = ShardLoad("full size", 100_000, 1_000, 100, 10_000)
REFERENCE = ShardLoad("one-process p99 limit", 5_000, 100, 50, 5_000)


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
    def batches_per_change(self) -> float:
        """Accounts' batches published per change: the shard's accounts a change touches."""
        return self.batches / self.changes

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
    # One turn holds every account (no batch waits for a later turn and conflates with
    # the next change's): the batches per change are counted exactly.
    fanout = Fanout(registry, metrics_interval=None, turn_size=max(1, load.accounts))
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
        place = holding(i, accounts=load.accounts, instruments=load.instruments)
        account = f"acct-{place.account}"
        if shard_of(account, shards) != shard:
            continue
        instrument = instruments[place.instrument]
        engine.position_opened(
            Position(
                id=f"p-{i}",
                account=account,
                instrument=instrument,
                side=PositionSide.BUY if place.long else PositionSide.SELL,
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


@dataclass(frozen=True, slots=True)
class ShardsOptions:
    changes: int
    """BBO changes each measurement replays."""

    @classmethod
    def quick(cls) -> ShardsOptions:
        return cls(changes=300)

    @classmethod
    def full(cls) -> ShardsOptions:
        return cls(changes=10_000)


def report(
    full_size: tuple[ShardCost, ShardCost], reference: ShardCost, options: ShardsOptions
) -> ScenarioResult:
    model = CostModel.fit(*full_size)
    limit = reference.busy
    result = ScenarioResult(
        key="shards",
        title="3b. Profit over positions shards: one shard's CPU per BBO change",
        how=(
            f"{options.changes:,} BBO changes (round-robin over the instruments, bid and ask "
            "moved each time) through one shard's real path in this process: the bus message "
            "decoded into its registry, the ProfitEngine marking the shard's positions of the "
            "instrument, each watched account's frames encoded into one bus batch (the NATS "
            "write left out); a loop turn after every change, so nothing is conflated. "
            "Positions spread as in scenario 3 (bench.holdings). Shard 0 "
            "of 1 and of 2 (accounts by bus.positions.shard_of) for the full-size workload; "
            "the reference is the largest workload one process held at p99 <= 50 ms. busy = "
            "the load's changes/s x CPU per change. Model: CPU per change = a + b x marks per "
            "change, fitted from the 1- and 2-shard rows."
        ),
    )
    rows: list[tuple[str, ...]] = []
    for cost in (reference, *full_size):
        per_mark = cost.cpu_seconds / cost.marks * 1e6 if cost.marks else 0.0
        rows.append(
            (
                cost.load.name,
                f"{cost.load.positions:,} / {cost.load.accounts:,} / {cost.load.instruments}",
                number(cost.load.rate),
                f"{cost.shard} of {cost.shards}",
                f"{cost.positions:,}",
                f"{cost.marks_per_change:.1f}",
                f"{cost.batches_per_change:.1f}",
                f"{cost.per_change * 1e6:.1f}",
                f"{per_mark:.2f}",
                f"{cost.busy:.0%}",
            )
        )
    result.tables.append(
        Table(
            "one shard's CPU per BBO change",
            (
                "load",
                "positions / accounts / instruments",
                "changes/s",
                "shard",
                "positions held",
                "marks per change",
                "batches per change",
                "µs per change",
                "µs per mark",
                "busy",
            ),
            rows,
        )
    )
    needed = model.shards_needed(FULL_SIZE, limit)
    result.tables.append(
        Table(
            "the model for the full-size workload at K shards",
            ("K", "busy per shard"),
            [(str(k), f"{model.busy(FULL_SIZE, k):.0%}") for k in (1, 2, 4, 8, 16)],
        )
    )
    for load in (REFERENCE, FULL_SIZE):
        spread = Spread.placed(load.positions, accounts=load.accounts, instruments=load.instruments)
        result.notes.append(f"{load.name}, all shards: {spread.describe()}")
    result.notes.append(
        f"model: {model.fixed * 1e6:.1f} µs per change + {model.per_mark * 1e6:.2f} µs per "
        f"marked position; limit {limit:.0%} of a core (the one-process p99 limit)"
    )
    result.notes.append(
        "shards needed for the full-size workload: "
        + (str(needed) if needed is not None else "none suffices")
    )
    result.figures["fixed_us_per_change"] = model.fixed * 1e6
    result.figures["us_per_mark"] = model.per_mark * 1e6
    result.figures["limit_busy"] = limit
    if needed is not None:
        result.figures["design_shards_needed"] = needed
    return result


def run(options: ShardsOptions, progress: Progress) -> ScenarioResult:
    progress.scenario("shards")

    async def measured() -> tuple[tuple[ShardCost, ShardCost], ShardCost]:
        progress.step(f"{FULL_SIZE.name}: shard 0 of 1 and of 2, {options.changes:,} changes")
        full_size = await measure(FULL_SIZE, options.changes)
        progress.step(f"{REFERENCE.name}: one shard, {options.changes:,} changes")
        reference = await measure_shard(REFERENCE, shards=1, shard=0, changes=options.changes)
        return full_size, reference

    full_size, reference = asyncio.run(measured())
    progress.done()
    return report(full_size, reference, options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--changes", type=int, default=ShardsOptions.full().changes)
    args = parser.parse_args(argv)
    print(run(ShardsOptions(args.changes), Progress()).render())


if __name__ == "__main__":
    main()
