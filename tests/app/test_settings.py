"""Settings: shipped configs load, the demo file is the built-in demo, bad input is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.exceptions import ConfigError
from app.settings import Settings, load_settings, settings_from_dict

CONFIG = Path(__file__).parents[2] / "config"


def test_demo_file_is_the_builtin_demo() -> None:
    assert load_settings(CONFIG / "demo.toml") == Settings.demo()


def test_live_example_loads() -> None:
    settings = load_settings(CONFIG / "live.example.toml")
    assert [venue.id for venue in settings.venues] == ["binance", "binance-usdm"]
    assert settings.venues[0].symbols == {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"}
    assert settings.venues[1].symbols["BTC-USDT-PERP"] == "BTCUSDT"
    assert settings.server.limits.max_subscriptions == 1000


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"serverr": {}}, "unknown key(s) serverr"),
        ({"server": {"port": "80"}}, "[server].port must be int"),
        ({"server": {"port": 70000}}, "port must be 0..65535"),
        ({"server": {"limits": {"max_subscriptions": 0}}}, "[server.limits]"),
        ({"storage": {"window_ms": 0}}, "window_ms must be positive"),
        ({"venues": [{"symbols": ["BTC-USDT"]}]}, "venues[0].id is required"),
        ({"venues": [{"id": "nowhere", "symbols": ["BTC-USDT"]}]}, "unknown venue kind"),
        ({"venues": [{"id": "binance", "symbols": []}]}, "venues[0].symbols must be"),
        (
            {
                "venues": [
                    {"id": "binance", "symbols": ["A-B"]},
                    {"id": "binance", "symbols": ["A-B"]},
                ]
            },
            "venue ids must be unique",
        ),
    ],
)
def test_bad_settings_are_named(document: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(document)
    assert message in str(caught.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport=1")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_settings(path)
