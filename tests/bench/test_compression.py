"""The compression scenario at a tiny size: every contender delivers, and compressed
frames are smaller on the wire than the same server's plain ones."""

from __future__ import annotations

from bench.compression import CompressionOptions, Contender, run
from bench.report import Progress


def test_compression_reports_bytes_and_cpu_per_delivery_for_each_server() -> None:
    options = CompressionOptions(subscribers=3, instruments=2, rate=200.0, seconds=0.4)
    result = run(options, Progress())

    (table,) = result.tables
    assert [row[0] for row in table.rows] == [contender.value for contender in Contender]
    assert [row[4] for row in table.rows if row[0] in ("marketcast", "websockets broadcast")] == [
        "-",
        "-",
    ]
    figures = result.figures
    for contender in Contender:
        key = contender.name.lower()
        assert figures[f"{key}_deliveries"] > 0
        assert figures[f"{key}_bytes_per_delivery"] > 0
        assert figures[f"{key}_cpu_ns_per_delivery"] > 0
    # A bbo message deflates to well under its size, even alone (no context takeover).
    assert (
        figures["marketcast_compressed_bytes_per_delivery"]
        < figures["marketcast_bytes_per_delivery"]
    )
    assert (
        figures["websockets_deflate_bytes_per_delivery"] < figures["websockets_bytes_per_delivery"]
    )
