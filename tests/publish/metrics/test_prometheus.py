"""/metrics: the exposition parses with prometheus_client's own parser and says exactly
what the histograms and counters hold."""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from publish.metrics.prometheus import PrometheusExporter
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
    setup.at(1.0)
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
        for venue, counts in (("binance", (0.0, 2.0, 0.0)), ("kraken", (1.0, 0.0, 0.0)))
        for state, count in zip(("syncing", "live", "stale"), counts, strict=True)
    ]
    assert samples(parsed["marketcast_start_time_seconds"]) == [
        ("marketcast_start_time_seconds", {}, 1_700_000_000.0)
    ]
