"""/metrics: the exposition parses with prometheus_client's own parser and says exactly
what the histograms and counters hold."""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from publish.metrics.build import build
from publish.metrics.cpu import CpuTimes
from publish.metrics.hdr import SECOND_NS
from publish.metrics.prometheus import ExtraGauge, PrometheusExporter
from publish.metrics.recorder import Stage
from tests.publish.metrics.support import new_setup, quote
from tests.publish.support import BTC, ETH, KRAKEN_BTC

SUMMARIES = {
    "marketcast_feed_latency_seconds",
    "marketcast_ingest_seconds",
    "marketcast_publish_seconds",
    "marketcast_end_to_end_seconds",
    "marketcast_db_flush_seconds",
    "marketcast_db_batch_rows",
    "marketcast_event_loop_lag_seconds",
    "marketcast_bus_hop_seconds",
    "marketcast_position_op_seconds",
}
COUNTERS_AND_GAUGES = {
    "marketcast_clients": "gauge",
    "marketcast_frames_sent": "counter",
    "marketcast_messages_sent": "counter",
    "marketcast_conflated": "counter",
    "marketcast_slow_closes": "counter",
    "marketcast_venue_instruments": "gauge",
    "marketcast_instrument_updates": "counter",
    "marketcast_instrument_update_rate": "gauge",
    "marketcast_instrument_activity": "gauge",
    "marketcast_instrument_state": "gauge",
    "marketcast_db_pending_rows": "gauge",
    "marketcast_db_healthy": "gauge",
    "marketcast_db_rows_written": "counter",
    "marketcast_start_time_seconds": "gauge",
    "marketcast_metrics_tick_errors": "counter",
    "marketcast_event_loop_cpu_seconds": "counter",
}


def families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Metric) -> list[tuple[str, dict[str, str], float]]:
    return [(sample.name, sample.labels, sample.value) for sample in family.samples]


def test_the_exposition_holds_every_family_with_exact_values(tmp_path: Path) -> None:
    setup = new_setup(tmp_path)
    quote(setup.feed, BTC, 20)
    quote(setup.feed, ETH, 2)
    setup.fanout.counters.frames_sent += 30
    setup.at(1.0, CpuTimes(process=3.5, event_loop=2.25))
    exporter = PrometheusExporter(setup.metrics)
    assert exporter.content_type == "text/plain; version=0.0.4; charset=utf-8"
    parsed = families(exporter.render().decode())
    assert {name for name, family in parsed.items() if family.type == "summary"} == SUMMARIES
    assert {name: parsed[name].type for name in COUNTERS_AND_GAUGES} == COUNTERS_AND_GAUGES

    binance = {"venue": "binance"}
    assert samples(parsed["marketcast_feed_latency_seconds"]) == [
        *(
            ("marketcast_feed_latency_seconds", {**binance, "quantile": q}, 7e-9)
            for q in ("0.5", "0.9", "0.99", "0.999")
        ),
        ("marketcast_feed_latency_seconds_count", binance, 22.0),
        ("marketcast_feed_latency_seconds_sum", binance, 1.54e-7),
    ]
    publish = samples(parsed["marketcast_publish_seconds"])
    assert [(name, labels) for name, labels, _ in publish] == [
        *(("marketcast_publish_seconds", {"quantile": q}) for q in ("0.5", "0.9", "0.99", "0.999")),
        ("marketcast_publish_seconds_count", {}),
        ("marketcast_publish_seconds_sum", {}),
    ]
    assert all(math.isnan(value) for _, _, value in publish[:4])
    assert [value for _, _, value in publish[4:]] == [0.0, 0.0]
    assert samples(parsed["marketcast_frames_sent"]) == [("marketcast_frames_sent_total", {}, 30.0)]
    assert samples(parsed["marketcast_clients"]) == [("marketcast_clients", {}, 0.0)]
    assert samples(parsed["marketcast_instrument_updates"]) == [
        ("marketcast_instrument_updates_total", {"instrument": name}, updates)
        for name, updates in ((BTC, 20.0), (ETH, 2.0), (KRAKEN_BTC, 0.0))
    ]
    assert samples(parsed["marketcast_instrument_activity"]) == [
        ("marketcast_instrument_activity", {"instrument": name, "activity": kind}, value)
        for name, hot in ((BTC, "hot"), (ETH, "warm"), (KRAKEN_BTC, "cold"))
        for kind, value in (
            ("hot", float(hot == "hot")),
            ("warm", float(hot == "warm")),
            ("cold", float(hot == "cold")),
        )
    ]
    assert samples(parsed["marketcast_venue_instruments"]) == [
        ("marketcast_venue_instruments", {"venue": venue, "state": state}, count)
        for venue, counts in (("binance", (0.0, 2.0, 0.0, 0.0)), ("kraken", (1.0, 0.0, 0.0, 0.0)))
        for state, count in zip(("syncing", "live", "stale", "halted"), counts, strict=True)
    ]
    assert samples(parsed["marketcast_start_time_seconds"]) == [
        ("marketcast_start_time_seconds", {}, 1_700_000_000.0)
    ]
    # The loop thread's CPU as of the last tick.
    assert samples(parsed["marketcast_event_loop_cpu_seconds"]) == [
        ("marketcast_event_loop_cpu_seconds_total", {}, 2.25)
    ]


def test_latencies_are_also_histograms_with_cumulative_buckets(tmp_path: Path) -> None:
    setup = new_setup(tmp_path)
    ingest = setup.metrics.recorder.stages[Stage.INGEST]
    for value in (500, 3_000, 3_000, 2_000_000, 40 * SECOND_NS):
        ingest.record(value)
    setup.at(1.0)
    ingest.record(900)
    setup.at(2.0)
    parsed = families(PrometheusExporter(setup.metrics).render().decode())
    histograms = {name for name, family in parsed.items() if family.type == "histogram"}
    assert histograms == {
        "marketcast_feed_latency_histogram_seconds",
        "marketcast_ingest_histogram_seconds",
        "marketcast_publish_histogram_seconds",
        "marketcast_end_to_end_histogram_seconds",
        "marketcast_db_flush_histogram_seconds",
        "marketcast_db_batch_rows_histogram",
        "marketcast_event_loop_lag_histogram_seconds",
        "marketcast_bus_hop_histogram_seconds",
        "marketcast_position_op_histogram_seconds",
    }
    buckets = {
        sample.labels["le"]: sample.value
        for sample in parsed["marketcast_ingest_histogram_seconds"].samples
        if sample.name.endswith("_bucket")
    }
    expected_at = {
        "1e-06": 2.0,  # 500 ns, 900 ns
        "2.5e-06": 2.0,
        "5e-06": 4.0,  # and the two 3 µs
        "0.001": 4.0,
        "0.0025": 5.0,  # and 2 ms
        "30.0": 5.0,
        "+Inf": 6.0,  # and 40 s
    }
    assert {le: buckets[le] for le in expected_at} == expected_at
    assert list(buckets.values()) == sorted(buckets.values()), "cumulative"
    counts = {
        sample.name: sample.value
        for sample in parsed["marketcast_ingest_histogram_seconds"].samples
        if not sample.name.endswith("_bucket")
    }
    summary_count = next(
        sample.value
        for sample in parsed["marketcast_ingest_seconds"].samples
        if sample.name == "marketcast_ingest_seconds_count"
    )
    assert counts["marketcast_ingest_histogram_seconds_count"] == summary_count == 6.0


def test_build_info_process_metrics_and_extra_gauges(tmp_path: Path) -> None:
    setup = new_setup(tmp_path)
    setup.at(1.0)
    exporter = PrometheusExporter(
        setup.metrics, role="edge", gauges=[ExtraGauge("db_wal_bytes", "WAL size", lambda: 4096)]
    )
    parsed = families(exporter.render().decode())
    current = build()
    assert samples(parsed["marketcast_build_info"]) == [
        (
            "marketcast_build_info",
            {"version": current.version, "commit": current.commit, "role": "edge"},
            1.0,
        )
    ]
    assert samples(parsed["marketcast_db_wal_bytes"]) == [("marketcast_db_wal_bytes", {}, 4096.0)]
    process = {name for name in parsed if name.startswith("process_")}
    assert {"process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds"} <= process
    assert "python_info" in parsed
