"""Scenario 7 at a tiny size: the single process, ingest -> NATS -> 1 and 2 edges (real
nats-server, real role processes), subscribers in other processes; and the nodes the
order-entry scenario adds (a positions shard)."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

from bench.cluster import SINGLE, ClusterOptions, ClusterTrial, edges_name, report, run
from bench.clusternodes import NodeProcess, NodeSpec
from bench.ramp import RepeatedStep
from bench.report import Progress
from bus.natsserver import NatsServer


def test_cluster_measures_the_single_process_and_the_edges_side_by_side() -> None:
    options = ClusterOptions(
        subscribers=(4,), rate=100.0, instruments=3, warmup=0.3, seconds=0.4, repeats=1
    )
    result = run(options, Progress())

    (table,) = result.tables
    assert [(row[0], row[1]) for row in table.rows] == [
        ("4", "single process"),
        ("4", "ingest -> NATS -> 1 edge"),
        ("4", "ingest -> NATS -> 2 edges"),
    ]
    for row in table.rows:
        assert row[3] != "0"  # deliveries arrived, through the bus too
        assert row[4] != "-"  # with end-to-end latencies
    assert [row[7] for row in table.rows][0] == "-"  # the single process has no ingest
    assert sorted(result.figures) == sorted(
        f"n4_edges{edges}_{figure}"
        for edges in (1, 2)
        for figure in ("hop_p50_ms", "hop_p99_ms", "cpu_per_delivery_vs_single")
    )
    assert [target.what.split(":")[0] for target in result.targets] == [
        "bus hop, 4 subscribers, 100 changes/s",
        "bus hop, 4 subscribers",
        "ingest -> NATS -> 1 edge, 4 subscribers, 100 changes/s",
        "ingest -> NATS -> 2 edges, 4 subscribers, 100 changes/s",
    ]


def test_a_positions_node_and_an_edge_learn_the_instruments_from_the_ingest() -> None:
    with NatsServer() as nats:
        roles = ("ingest", "positions", "edge")
        nodes = [NodeSpec(role, nats.url, "benchnodes", instruments=3) for role in roles]
        with (
            NodeProcess(nodes[0]) as ingest,
            NodeProcess(nodes[1]) as shard,
            NodeProcess(nodes[2]) as edge,
        ):
            assert ingest.url.startswith("ws://") and edge.url.startswith("ws://")
            assert shard.url == ""  # a shard serves no clients
            edge.window()
            shard.window()
            for node in (edge, shard):
                cpu = node.measure()[1]
                assert 0 <= cpu.event_loop <= cpu.process  # the loop's thread is one of them


def _step(delivered: float, serving_cpu: float) -> RepeatedStep[ClusterTrial]:
    latency = HdrHistogram(1, 60_000_000_000, 3)
    latency.record_value(1_000_000)
    trial = ClusterTrial(
        offered=100_000.0,
        delivered=delivered,
        end_to_end=latency,
        serving_cpu=serving_cpu,
        ingest_cpu=0.3,
        closed=0,
    )
    return RepeatedStep(rate=100_000.0, trials=[trial])


def test_cpu_per_delivery_is_judged_only_where_the_subscribers_kept_up() -> None:
    options = ClusterOptions(subscribers=(10, 100), edges=(1,))
    kept_up = {SINGLE: [_step(100_000.0, 0.5)], edges_name(1): [_step(99_000.0, 0.5)]}
    fell_behind = {SINGLE: [_step(3_000.0, 0.1)], edges_name(1): [_step(99_000.0, 0.5)]}

    judged = report({10: kept_up, 100: kept_up}, options)
    assert [t.what for t in judged.targets if "CPU per delivery" in t.what] == [
        "ingest -> NATS -> 1 edge, 100 subscribers, 50 changes/s: edge CPU per delivery vs "
        "the single process's"
    ]
    not_judged = report({10: kept_up, 100: fell_behind}, options)
    assert not [t for t in not_judged.targets if "CPU per delivery" in t.what]
    assert any("not judged" in note and "3%" in note for note in not_judged.notes)


def test_cpu_per_delivery_is_measured_at_a_rate_the_subscribers_can_read() -> None:
    # The hop at the smaller count, at the full rate; the largest count (where CPU per
    # delivery is judged) at one its subscriber process reads, not a flood.
    options = ClusterOptions.full()
    assert options.subscribers == (100, 1000)
    assert [options.rate_at(n) for n in options.subscribers] == [1000.0, 50.0]
    alone = ClusterOptions(subscribers=(4,), rate=100.0)
    assert alone.rate_at(4) == 100.0
