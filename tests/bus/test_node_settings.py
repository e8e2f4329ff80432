"""``[node]`` and ``[bus]``: defaults, overrides, and errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from app.exceptions import ConfigError
from app.settings import Settings, settings_from_dict

VENUES = [{"id": "binance", "symbols": ["BTC-USDT"], "simulate": True}]


def test_defaults_are_one_process_and_a_local_bus() -> None:
    settings = settings_from_dict({})
    assert settings.node.role == "all"
    assert settings.bus.servers == ("nats://127.0.0.1:4222",)
    assert (settings.bus.prefix, settings.bus.stale_after_ms) == ("marketcast", 2000.0)
    assert (settings.bus.shards, settings.bus.shard) == (1, 0)


def test_a_cluster_of_nats_servers_and_every_key() -> None:
    settings = settings_from_dict(
        {
            "node": {"role": "ingest"},
            "bus": {
                "url": ["nats://a:4222", "nats://b:4222"],
                "prefix": "prod.md",
                "stale_after_ms": 500,
                "shards": 4,
                "shard": 3,
            },
            "venues": VENUES,
        }
    )
    assert settings.node.role == "ingest"
    assert settings.bus.servers == ("nats://a:4222", "nats://b:4222")
    assert settings.bus.prefix == "prod.md"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"node": {"role": "router"}}, r"\[node\].role must be one of all, ingest, edge"),
        ({"node": {"rol": "edge"}}, r"\[node\]: unknown key\(s\) rol"),
        ({"bus": {"urls": "nats://x"}}, r"\[bus\]: unknown key\(s\) urls"),
        ({"bus": {"url": "http://x:4222"}}, r"\[bus\].url must look like nats://host:port"),
        ({"bus": {"url": []}}, r"\[bus\].url must be a NATS URL or a non-empty list"),
        ({"bus": {"url": 4222}}, r"\[bus\].url must be str \| list\[str\]"),
        ({"bus": {"prefix": "a.*"}}, r"\[bus\].prefix: bus prefix must be"),
        ({"bus": {"stale_after_ms": 0}}, r"\[bus\].stale_after_ms must be positive"),
        ({"bus": {"shards": 0}}, r"\[bus\].shards must be at least 1"),
        ({"bus": {"shards": 2, "shard": 2}}, r"\[bus\].shard must be 0..1"),
        ({"node": {"role": "edge"}, "venues": VENUES}, r"\[node\].role = 'edge' has no feeds"),
        ({"node": {"role": "ingest"}}, r"\[node\].role = 'ingest' needs at least one"),
    ],
)
def test_bad_settings_name_the_key(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(document)


def test_command_line_overrides() -> None:
    shared = settings_from_dict({"venues": VENUES})  # one file for every role
    edge = shared.with_role("edge").with_bus("nats://10.0.0.1:4222, nats://10.0.0.2:4222")
    assert edge.node.role == "edge" and edge.venues == ()
    assert edge.bus.servers == ("nats://10.0.0.1:4222", "nats://10.0.0.2:4222")
    assert shared.with_role("ingest").venues == shared.venues
    with pytest.raises(ConfigError, match="--role must be one of"):
        shared.with_role("leader")
    with pytest.raises(ConfigError, match="--bus must look like nats://"):
        shared.with_bus("localhost:4222")
    with pytest.raises(ConfigError, match="needs at least one"):
        Settings().with_role("ingest")


SECRET = "a-password-that-must-never-show"


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ({"password": SECRET}, r"\[bus\].password is set without \[bus\].user"),
        ({"user": "mc"}, r"\[bus\].user needs \[bus\].password"),
        (
            {"user": "mc", "password": SECRET, "token": SECRET},
            r"\[bus\].user and \[bus\].token are different ways to log in to NATS: set one",
        ),
        (
            {"token": SECRET, "creds_file": "/etc/nats/node.creds"},
            r"\[bus\].token and \[bus\].creds_file are different ways",
        ),
        (
            {"url": f"nats://mc:{SECRET}@n1:4222", "token": SECRET},
            r"\[bus\].url carries credentials .* and \[bus\].token is set: give them once",
        ),
        ({"tls_cert_file": "/c.pem"}, r"go together: \[bus\].tls_key_file is not set"),
        ({"tls_key_file": "/k.pem"}, r"go together: \[bus\].tls_cert_file is not set"),
        ({"password": 12345678}, r"\[bus\].password must be str, got a int"),
        ({"url": f"http://mc:{SECRET}@n1:4222"}, r"got 'http://mc:\*\*\*@n1:4222'"),
    ],
)
def test_bad_bus_logins_name_the_key_and_never_the_secret(
    bus: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        settings_from_dict({"bus": bus})
    assert SECRET not in str(raised.value) and "12345678" not in str(raised.value)


def test_bus_logins_from_the_file_or_the_environment() -> None:
    from app.settings import with_environment

    settings = settings_from_dict(
        {"bus": {"user": "mc", "tls_ca_file": "/etc/nats/ca.pem", "password": "from-the-file"}}
    )
    assert settings.bus.credentials.method == "user"
    environ = {"MARKETCAST_BUS__PASSWORD": SECRET}
    from_env = with_environment(settings, environ)
    assert from_env.bus.password == SECRET and from_env.bus.user == "mc"
    assert from_env.bus.credentials.describe() == "user 'mc', TLS (CA /etc/nats/ca.pem)"
    token = with_environment(Settings(), {"MARKETCAST_BUS__TOKEN": SECRET})
    assert token.bus.credentials.method == "token"
    creds = with_environment(Settings(), {"MARKETCAST_BUS__CREDS_FILE": "/run/nats.creds"})
    assert creds.bus.credentials.describe() == "creds file /run/nats.creds"
    with pytest.raises(ConfigError, match=r"environment: \[bus\].user and \[bus\].token") as err:
        with_environment(from_env, {"MARKETCAST_BUS__TOKEN": SECRET})
    assert SECRET not in str(err.value)
