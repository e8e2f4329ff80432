"""The shard profit cost at a tiny size: the slices follow ``shard_of``, every change
marks the shard's positions of its instrument, and the cost model is consistent."""

from __future__ import annotations

from bench.report import Progress
from bench.shards import (
    CostModel,
    ShardCost,
    ShardLoad,
    ShardsOptions,
    measure,
    measure_shard,
    report,
    run,
)
from bus.positions import shard_of

TINY = ShardLoad("tiny", 40, 8, 4, 100)


async def test_a_shard_holds_its_accounts_positions_and_marks_them_on_every_change() -> None:
    one, two = await measure(TINY, changes=20)
    assert (one.positions, one.accounts) == (40, 8)
    mine = [n for n in range(8) if shard_of(f"acct-{n}", 2) == 0]
    assert two.accounts == len(mine)
    assert two.positions == sum(1 for i in range(40) if i % 8 in mine)
    assert one.marks == 20 * 10  # 10 positions per instrument, each change marks them
    # Every account holds every instrument (bench.holdings): each change touches all 8.
    assert one.batches == 20 * 8
    assert two.batches == 20 * two.accounts
    other = await measure_shard(TINY, shards=2, shard=1, changes=20)
    assert other.positions + two.positions == 40


def test_the_cost_model_fits_and_predicts() -> None:
    load = ShardLoad("x", 1_000, 10, 10, 1_000)
    one = ShardCost(load, 1, 0, 1_000, 10, 100, 100 * 100, 100, 100 * (10e-6 + 100 * 1e-6))
    two = ShardCost(load, 2, 0, 500, 5, 100, 100 * 50, 100, 100 * (10e-6 + 50 * 1e-6))
    model = CostModel.fit(one, two)
    assert abs(model.fixed - 10e-6) < 1e-9 and abs(model.per_mark - 1e-6) < 1e-12
    assert abs(model.busy(load, 1) - one.busy) < 1e-9
    # 110 us per change at 1,000/s is 11% of a core; under 6% needs K with 10 + 100/K <= 60.
    assert model.shards_needed(load, 0.06) == 2
    assert model.shards_needed(load, 0.005) is None


async def test_the_report_names_the_shards_needed() -> None:
    design = await measure(TINY, changes=10)
    result = report(design, design[0], ShardsOptions(10))
    assert result.notes[-1].startswith("shards needed for the full-size workload:")
    assert result.notes[:2] == [
        "one-process p99 limit, all shards: each account holds positions on 50 instruments; "
        "one BBO change touches 100 accounts",
        "full size, all shards: each account holds positions on 100 instruments; "
        "one BBO change touches 1,000 accounts",
    ]
    costs, model = result.tables
    assert [row[3] for row in costs.rows] == ["0 of 1", "0 of 1", "0 of 2"]
    assert costs.columns[6] == "batches per change"
    assert [row[6] for row in costs.rows] == ["8.0", "8.0", f"{design[1].accounts}.0"]
    assert [row[0] for row in model.rows] == ["1", "2", "4", "8", "16"]


def test_the_shards_scenario_runs_from_the_bench() -> None:
    result = run(ShardsOptions(changes=20), Progress())
    assert result.key == "shards"
    assert result.render().startswith("## 3b. Profit over positions shards")
    assert result.figures["us_per_mark"] > 0
