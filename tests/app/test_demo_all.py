"""config/demo-all.toml: every venue id simulated at once, every instrument live."""

from __future__ import annotations

from pathlib import Path

from app.settings import load_settings
from app.venues import VENUE_KINDS
from tests.app.serving import running
from tests.waiting import eventually

DEMO_ALL = Path(__file__).parents[2] / "config" / "demo-all.toml"


async def test_every_venue_id_is_simulated_and_every_instrument_goes_live(
    tmp_path: Path,
) -> None:
    settings = load_settings(DEMO_ALL).with_port(0).with_storage_path(str(tmp_path / "all.db"))
    assert sorted(venue.id for venue in settings.venues) == sorted(VENUE_KINDS)
    assert all(venue.simulate for venue in settings.venues)
    instruments = [
        f"{venue.id}:{canonical}" for venue in settings.venues for canonical in venue.symbols
    ]
    perpetuals = [name for name in instruments if name.endswith("-PERP")]
    assert {name.split(":")[0] for name in perpetuals} == {"binance-usdm", "bybit-linear", "okx"}
    async with running(settings) as server:
        assert sorted(server.simulators) == sorted(VENUE_KINDS)
        await eventually(lambda: all(map(server.registry.is_live, instruments)), "all live")
        for venue in settings.venues:
            simulator = server.simulators[venue.id]
            assert sorted(simulator.symbols) == sorted(venue.symbols.values())
