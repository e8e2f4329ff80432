"""``marketcast`` as an operator runs it: --version, settings from the environment, JSON
logs, and every start-up problem as one line with exit status 2, found before anything
is started or created."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from app.exceptions import ConfigError
from app.logs import JsonFormatter
from app.settings import Settings, load_settings, with_environment
from publish.metrics.build import build

CONFIG = Path(__file__).parents[2] / "config"


def marketcast(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version(tmp_path: Path) -> None:
    done = marketcast("--version", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    current = build()
    assert done.stdout == f"marketcast {current.version} ({current.commit})\n"
    assert current.version == "0.1.0" and current.commit != ""


def test_every_setting_can_come_from_the_environment() -> None:
    settings = with_environment(
        Settings.demo(),
        {
            "MARKETCAST_SERVER__PORT": "9100",
            "MARKETCAST_SERVER__HOST": "0.0.0.0",
            "MARKETCAST_SERVER__LIMITS__MAX_CONNECTIONS": "500",
            "MARKETCAST_SERVER__LIMITS__SEND_BUFFER_BYTES": "65536",
            "MARKETCAST_STORAGE__WINDOW_MS": "2.5",
            "MARKETCAST_AUTH__SECRET": "1234567890abcdefghij",
            "MARKETCAST_AUTH__MARKET_DATA_REQUIRES_AUTH": "true",
            "MARKETCAST_SIMULATOR__SEED": "7",
            "MARKETCAST_UNRELATED": "ignored: no section separator",
            "OTHER__THING": "ignored: not ours",
        },
    )
    assert (settings.server.port, settings.server.host) == (9100, "0.0.0.0")
    assert settings.server.limits.max_connections == 500
    assert settings.server.limits.send_buffer_bytes == 65536
    assert settings.storage.window_ms == 2.5
    assert settings.auth.secret == "1234567890abcdefghij"
    assert settings.auth.market_data_requires_auth is True
    assert settings.simulator.seed == 7
    assert settings.venues == Settings.demo().venues
    assert with_environment(Settings.demo(), {}) == Settings.demo()
    live = load_settings(CONFIG / "live.example.toml")
    assert with_environment(live, {"MARKETCAST_BOOK__CAPTURE_DEPTH": "50"}) == live


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MARKETCAST_SERVR__PORT": "1"}, "MARKETCAST_SERVR__PORT: no settings section [servr]"),
        (
            {"MARKETCAST_SERVER__PROT": "1"},
            "MARKETCAST_SERVER__PROT: [server] has no setting 'prot'",
        ),
        ({"MARKETCAST_SERVER__LIMITS": "1"}, "[server] has no setting 'limits'"),
        ({"MARKETCAST_SERVER__PORT": "eighty"}, "'eighty' is not a TOML value"),
        ({"MARKETCAST_SERVER__PORT": "70000"}, "environment: [server].port must be 0..65535"),
        ({"MARKETCAST_SERVER__PORT": '"80"'}, "[server].port must be int"),
        ({"MARKETCAST__PORT": "1"}, "a setting is MARKETCAST_<SECTION>__<KEY>"),
        ({"MARKETCAST_VENUES__ID": "x"}, "no settings section [venues]"),
    ],
)
def test_bad_environment_settings_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_environment(Settings.demo(), environ)
    assert message in str(caught.value)


def test_json_log_lines_carry_fields() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("feeds.runner", logging.WARNING, __file__, 1, "gap %d", (4,), None)
    record.venue = "binance"
    record.instrument = "binance:BTC-USDT"
    entry = orjson.loads(formatter.format(record))
    assert entry.pop("time").endswith("+00:00")
    assert entry == {
        "level": "WARNING",
        "logger": "feeds.runner",
        "message": "gap 4",
        "venue": "binance",
        "instrument": "binance:BTC-USDT",
    }
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in orjson.loads(formatter.format(failed))["exception"]


def assert_refused(done: subprocess.CompletedProcess[str], message: str, workdir: Path) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr, done.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["server.toml"], "nothing was created"


def write(workdir: Path, text: str) -> Path:
    path = workdir / "server.toml"
    path.write_text(text)
    return path


def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write(tmp_path, f'[storage]\npath = "{tmp_path / "m.db"}"\n')
        done = marketcast("run", "--config", str(config), "--port", str(port), cwd=tmp_path)
        assert_refused(done, f"marketcast: port {port} on 127.0.0.1 is already in use", tmp_path)
        # The same from the environment (the demo otherwise: it would start simulators).
        done = marketcast(
            "run",
            "--config",
            str(config),
            cwd=tmp_path,
            env={"MARKETCAST_SERVER__PORT": str(port)},
        )
        assert_refused(done, f"port {port} on 127.0.0.1 is already in use", tmp_path)


def test_bad_config_and_unreachable_storage_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()[1]  # nothing listens there once closed
    cases = {
        "[server]\nprot = 1\n": "unknown key(s) prot",
        '[storage]\npath = "/nonexistent/dir/m.db"\n': (
            "the directory /nonexistent/dir does not exist"
        ),
        (
            '[storage]\nbackend = "postgres"\n'
            f'dsn = "postgresql://u:hunter2@127.0.0.1:{nobody}/x"\ntimeout_ms = 2000.0\n'
        ): f"cannot connect to PostgreSQL at postgresql://u:***@127.0.0.1:{nobody}/x",
        "[server\n": "invalid TOML",
    }
    for text, message in cases.items():
        config = write(tmp_path, text)
        done = marketcast("run", "--config", str(config), "--port", "0", cwd=tmp_path)
        assert_refused(done, message, tmp_path)
        assert "hunter2" not in done.stderr


def test_a_shared_secret_file_is_refused_at_start(tmp_path: Path) -> None:
    secret = tmp_path / "marketcast.secret"
    secret.write_text("a-shared-secret-of-more-than-16\n")
    secret.chmod(0o644)
    config = write(tmp_path, f'[storage]\npath = "{tmp_path / "m.db"}"\n')
    done = marketcast("run", "--config", str(config), "--port", "0", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "is readable by others (mode 0644)" in done.stderr
    assert not (tmp_path / "m.db").exists()
