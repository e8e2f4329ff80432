"""Scenario 4 at a tiny size: the flusher and the bare floor on SQLite and PostgreSQL, and
the PostgreSQL COPY variants."""

from __future__ import annotations

from bench.report import Progress
from bench.storage import StorageOptions, run
from tests.postgres import PG_DSN


def test_storage_measures_both_backends_and_their_floors() -> None:
    options = StorageOptions(rates=(2000,), seconds=0.4, warmup=0.1, pg_dsn=PG_DSN)
    result = run(options, Progress())

    steps, floors, formats = result.tables
    assert [(row[0], row[1]) for row in steps.rows] == [("sqlite", "2,000"), ("postgres", "2,000")]
    assert [(row[0], row[1]) for row in floors.rows] == [("sqlite", "10"), ("postgres", "10")]
    assert sorted(result.figures) == sorted(
        [
            f"{backend}_{figure}"
            for backend in ("sqlite", "postgres")
            for figure in ("floor_rows_per_s", "rows_per_s_at_2000", "flush_p99_ms", "lag_p99_ms")
        ]
        + [
            f"postgres_{variant}_flush_p99_ms"
            for variant in (
                "binary_numeric_fixed",
                "text_numeric",
                "binary_numeric_decimal",
                "text_bigint",
                "binary_bigint",
            )
        ]
    )
    assert all(value > 0 for value in result.figures.values())
    assert result.notes == []
    assert [row[:2] for row in formats.rows] == [
        ("binary COPY, NUMERIC from the fixed-point int (backend today)", "10"),
        ("text COPY, NUMERIC", "10"),
        ("binary COPY, NUMERIC from Decimal (asyncpg)", "10"),
        ("text COPY, BIGINT", "10"),
        ("binary COPY, BIGINT", "10"),
    ]
    assert all(row[2] != "0" and row[5] != "-" for row in formats.rows)


def test_storage_with_pruning_reports_rows_pruned_beside_flush_times() -> None:
    # No warm-up: on a fast host PostgreSQL prunes the 100,000 old rows within 0.1 s, and
    # a warm-up that long left the measured window with nothing to prune.
    options = StorageOptions(
        rates=(2000,), seconds=0.4, warmup=0.0, pg_dsn=PG_DSN, pg_formats=False, prune_rows=100_000
    )
    result = run(options, Progress())

    steps = result.tables[0]
    assert [(row[0], row[1]) for row in steps.rows] == [("sqlite", "2,000"), ("postgres", "2,000")]
    assert steps.columns[-2:] == ("pruned rows/s", "prune step ms")
    assert all(row[-2] not in ("-", "0") and row[-1] != "-" for row in steps.rows)
    for backend in ("sqlite", "postgres"):
        assert result.figures[f"{backend}_pruned_rows_per_s"] > 0
        assert result.figures[f"{backend}_prune_step_p99_ms"] > 0
    assert "Pruning on" in result.how
