"""Command line of the bench: choose scenarios and sizes, print the report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from bench import (
    cluster,
    compression,
    connections,
    fanout,
    ingest,
    ingestbus,
    opcost,
    orders,
    profit,
    shards,
    storage,
)
from bench.hoststalls import STALL_SECONDS
from bench.report import Machine, Progress, ScenarioResult
from bench.scenarioprocess import (
    Runner,
    ScenarioFailure,
    run_in_fresh_process,
    stop_signals_interrupt,
)


def build_parser(
    parser: argparse.ArgumentParser | None = None, scenarios: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m bench",
        description="Run marketcast's performance scenarios, each in a fresh process; "
        "print a Markdown report.",
    )
    scenarios = SCENARIOS if scenarios is None else scenarios
    parser.add_argument(
        "scenarios",
        nargs="+",
        choices=(*scenarios, "all"),
        metavar="SCENARIO",
        help=f"one or more of {', '.join(scenarios)}, or all",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and short runs (all scenarios in a few minutes)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--seconds",
        type=float,
        help="measured seconds per step or trial (fanout, storage, profit, orders)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        help="trials of every ramp step per contender, interleaved; the median decides "
        "(fanout, orders; default 3)",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=STALL_SECONDS,
        help="before each scenario every core spins this long to count the host's stalls "
        "(default %(default)g; 0: not measured)",
    )
    group = parser.add_argument_group("ingest, ingestbus")
    group.add_argument("--frames", type=int, help="frames of each recording (default: all)")
    group.add_argument("--repeat", type=int, help="runs per contender, best counts")
    group.add_argument(
        "--chunks",
        type=_counts,
        help="ingestbus: frames fed per event-loop turn, comma-separated (1,100)",
    )
    group.add_argument("--no-peer", action="store_true", help="skip the cryptofeed run")
    group = parser.add_argument_group("fanout")
    group.add_argument(
        "--subscribers", type=_counts, help="subscriber counts, comma-separated (100,1000,5000)"
    )
    group.add_argument(
        "--deliveries", type=_counts, help="the ramp of offered deliveries/s, comma-separated"
    )
    group.add_argument("--instruments", type=int, help="instruments every subscriber follows")
    group = parser.add_argument_group("profit")
    group.add_argument(
        "--positions", type=int, help="position count of the issue-5 workload (10000)"
    )
    group = parser.add_argument_group("shards")
    group.add_argument(
        "--shard-changes", type=int, help="BBO changes each shard measurement replays (10000)"
    )
    group = parser.add_argument_group("storage")
    group.add_argument("--rows", type=_counts, help="the ramp of offered BBO rows/s")
    group.add_argument(
        "--pg-dsn",
        default=storage.DEFAULT_PG_DSN,
        help="PostgreSQL to write to (default: %(default)s, or $MARKETCAST_BENCH_PG_DSN)",
    )
    group.add_argument(
        "--no-postgres", action="store_true", help="SQLite only (storage, orders, opcost)"
    )
    group.add_argument(
        "--prune-rows",
        type=int,
        default=0,
        help="old BBO rows to prune during each step (flush times with retention running)",
    )
    group = parser.add_argument_group("orders")
    group.add_argument("--opens", type=_counts, help="the ramp of offered position.open requests/s")
    group.add_argument(
        "--order-connections",
        type=int,
        help="websocket connections sending opens (orders: 200, opcost: 100)",
    )
    group = parser.add_argument_group("connections")
    group.add_argument("--connections", type=int, help="idle connections to hold (10000)")
    return parser


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(part.replace("_", "")) for part in text.split(",") if part)


def _ingest(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = ingest.IngestOptions.quick() if args.quick else ingest.IngestOptions.full()
    options = replace(
        base,
        frames=args.frames if args.frames is not None else base.frames,
        repeat=args.repeat or base.repeat,
        peer=not args.no_peer,
    )
    return ingest.run(options, progress)


def _ingestbus(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = ingestbus.IngestBusOptions.quick() if args.quick else ingestbus.IngestBusOptions.full()
    options = replace(
        base,
        frames=args.frames if args.frames is not None else base.frames,
        repeat=args.repeat or base.repeat,
        chunks=args.chunks or base.chunks,
    )
    return ingestbus.run(options, progress)


def _fanout(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = fanout.FanoutOptions.quick() if args.quick else fanout.FanoutOptions.full()
    options = replace(
        base,
        subscribers=args.subscribers or base.subscribers,
        deliveries=args.deliveries or base.deliveries,
        instruments=args.instruments or base.instruments,
        seconds=args.seconds or base.seconds,
        repeats=args.trials or base.repeats,
    )
    return fanout.run(options, progress)


def _profit(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = profit.ProfitOptions.quick() if args.quick else profit.ProfitOptions.full()
    workloads = base.workloads
    if args.positions:
        first, *others = workloads
        workloads = (replace(first, positions=args.positions), *others)
    options = replace(base, workloads=workloads, seconds=args.seconds or base.seconds)
    return profit.run(options, progress)


def _shards(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = shards.ShardsOptions.quick() if args.quick else shards.ShardsOptions.full()
    return shards.run(replace(base, changes=args.shard_changes or base.changes), progress)


def _storage(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = storage.StorageOptions.quick() if args.quick else storage.StorageOptions.full()
    options = replace(
        base,
        rates=args.rows or base.rates,
        seconds=args.seconds or base.seconds,
        pg_dsn=None if args.no_postgres else args.pg_dsn,
        prune_rows=args.prune_rows,
    )
    return storage.run(options, progress)


def _compression(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = (
        compression.CompressionOptions.quick()
        if args.quick
        else compression.CompressionOptions.full()
    )
    options = replace(
        base,
        subscribers=(args.subscribers or (base.subscribers,))[0],
        instruments=args.instruments or base.instruments,
        seconds=args.seconds or base.seconds,
    )
    return compression.run(options, progress)


def _connections(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = (
        connections.ConnectionsOptions.quick()
        if args.quick
        else connections.ConnectionsOptions.full()
    )
    options = replace(base, connections=args.connections or base.connections)
    return connections.run(options, progress)


def _orders(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = orders.OrdersOptions.quick() if args.quick else orders.OrdersOptions.full()
    options = replace(
        base,
        rates=args.opens or base.rates,
        connections=args.order_connections or base.connections,
        seconds=args.seconds or base.seconds,
        repeats=args.trials or base.repeats,
        pg_dsn=None if args.no_postgres else args.pg_dsn,
    )
    return orders.run(options, progress)


def _opcost(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = opcost.OpCostOptions.quick() if args.quick else opcost.OpCostOptions.full()
    options = replace(
        base,
        connections=args.order_connections or base.connections,
        pg_dsn=None if args.no_postgres else args.pg_dsn,
    )
    return opcost.run(options, progress)


def _cluster(args: argparse.Namespace, progress: Progress) -> ScenarioResult:
    base = cluster.ClusterOptions.quick() if args.quick else cluster.ClusterOptions.full()
    options = replace(
        base, seconds=args.seconds or base.seconds, repeats=args.trials or base.repeats
    )
    return cluster.run(options, progress)


RUNNERS: dict[str, Runner] = {
    "ingest": _ingest,
    "fanout": _fanout,
    "profit": _profit,
    "shards": _shards,
    "storage": _storage,
    "connections": _connections,
    "orders": _orders,
    "opcost": _opcost,
    "cluster": _cluster,
    "ingestbus": _ingestbus,
    "compression": _compression,
}
SCENARIOS = tuple(RUNNERS)


def run(
    args: argparse.Namespace,
    progress: Progress | None = None,
    runners: Mapping[str, Runner] = RUNNERS,
) -> tuple[list[ScenarioResult], list[str]]:
    """Run the chosen scenarios in order, each in a fresh process, and print the report
    as each one finishes. A scenario that fails is reported (its traceback on stderr)
    and the others still run. Returns the results and the names of the scenarios that
    failed."""
    progress = progress or Progress()
    chosen = tuple(runners) if "all" in args.scenarios else tuple(dict.fromkeys(args.scenarios))
    machine = Machine.current()
    print(f"# marketcast bench{' (quick)' if args.quick else ''}\n\n{machine.render()}\n")
    sys.stdout.flush()
    results: list[ScenarioResult] = []
    failures: list[ScenarioFailure] = []
    for name in chosen:
        outcome = run_in_fresh_process(name, runners[name], args, progress)
        if isinstance(outcome, ScenarioFailure):
            print(outcome.details.rstrip(), file=sys.stderr)
            sys.stderr.flush()
            failures.append(outcome)
        else:
            results.append(outcome)
        print(outcome.render())
        sys.stdout.flush()
    targets = [target for result in results for target in result.targets]
    if targets:
        met = sum(target.met for target in targets)
        print(f"## Summary\n\n{met} of {len(targets)} targets met.\n")
        for target in targets:
            print(target.render())
    failed = [failure.key for failure in failures]
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (errors on stderr)")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine.render(),
                    "results": [r.to_json() for r in results],
                    "failed": failed,
                    "errors": [failure.to_json() for failure in failures],
                },
                indent=2,
            )
        )
    return results, failed


def main(argv: Sequence[str] | None = None, runners: Mapping[str, Runner] = RUNNERS) -> int:
    """Exit status: 0 when every scenario ran, 1 when one failed, 130 when interrupted
    (Ctrl-C, SIGTERM, SIGHUP: the running scenario's processes are stopped first)."""
    args = build_parser(scenarios=tuple(runners)).parse_args(argv)
    try:
        with stop_signals_interrupt():
            _, failed = run(args, runners=runners)
    except KeyboardInterrupt:
        print("\ninterrupted: the running scenario and its helpers were stopped", file=sys.stderr)
        return 130
    return 1 if failed else 0
