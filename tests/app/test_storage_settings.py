"""[storage] backend selection and [positions]: what the config says is what runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.exceptions import ConfigError
from app.settings import PositionSettings, StorageSettings, settings_from_dict
from app.storage import storage_backend, storage_gauges
from publish.storage import SqliteBackend
from publish.storage.postgres import PostgresBackend
from tests.postgres import PG_DSN


def test_postgres_is_selected_with_its_dsn_schema_and_timeout() -> None:
    settings = settings_from_dict(
        {
            "storage": {
                "backend": "postgres",
                "dsn": PG_DSN,
                "schema": "trading",
                "timeout_ms": 250,
            },
            "positions": {
                "ack_timeout_ms": 1500,
                "max_per_account": 7,
                "profit_marks_per_tick": 500,
            },
        }
    )
    assert settings.storage == StorageSettings(
        backend="postgres", dsn=PG_DSN, schema="trading", timeout_ms=250
    )
    assert settings.positions == PositionSettings(
        ack_timeout_ms=1500, max_per_account=7, profit_marks_per_tick=500
    )
    backend = storage_backend(settings.storage)
    assert isinstance(backend, PostgresBackend)
    assert (backend.name, backend.schema) == ("postgres", "trading")


def test_sqlite_stays_the_default(tmp_path: Path) -> None:
    settings = settings_from_dict({"storage": {"path": str(tmp_path / "x.db")}})
    assert settings.storage.backend == "sqlite"
    assert settings.storage.retain_bbo_hours == 168
    assert (
        settings_from_dict({"storage": {"retain_bbo_hours": 0.5}}).storage.retain_bbo_hours == 0.5
    )
    assert isinstance(storage_backend(settings.storage), SqliteBackend)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"storage": {"backend": "mysql"}}, "[storage].backend must be one of sqlite, postgres"),
        ({"storage": {"backend": "postgres"}}, "[storage].dsn is required"),
        ({"storage": {"schema": ""}}, "[storage].schema must not be empty"),
        ({"storage": {"timeout_ms": 0}}, "[storage].timeout_ms must be positive"),
        ({"storage": {"dsn": 5}}, "[storage].dsn must be str"),
        ({"storage": {"retain_bbo_hours": -1}}, "[storage].retain_bbo_hours must be 0"),
        ({"positions": {"ack_timeout_ms": 0}}, "[positions].ack_timeout_ms must be positive"),
        ({"positions": {"max_per_account": 0}}, "[positions].max_per_account must be at least"),
        (
            {"positions": {"profit_marks_per_tick": 0}},
            "[positions].profit_marks_per_tick must be at least",
        ),
        ({"positions": {"ack": 1}}, "[positions]: unknown key(s) ack"),
    ],
)
def test_bad_storage_and_position_settings_are_named(
    document: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_dict(document)
    assert message in str(refused.value)


def test_sqlite_shows_its_wal_and_its_writers_own_checkpoints(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "g.db")
    gauges = {gauge.name: gauge for gauge in storage_gauges(backend)}
    assert set(gauges) == {"db_wal_bytes", "db_writer_checkpoints"}
    assert gauges["db_wal_bytes"].read() == 0  # no WAL file yet
    assert gauges["db_writer_checkpoints"].read() == 0
    backend.checkpointer.writer_checkpoints = 3
    assert gauges["db_writer_checkpoints"].read() == 3
    assert storage_gauges(storage_backend(StorageSettings(backend="postgres", dsn=PG_DSN))) == []
