"""Instrument metadata refreshed while the server runs: the plan (what changes), and the
whole server against a simulator whose catalog changes under it (real HTTP on
loopback, a short refresh interval)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from app.instruments import learn_instruments
from app.refresh import DELISTED, MetadataRefresher, RefreshPlan, plan_refresh
from app.settings import Settings, VenueSettings, settings_from_dict
from app.venues import VENUE_KINDS, build_simulator, simulator_endpoints
from book.registry import BookRegistry
from book.status import InstrumentState
from feeds.metadata import TradingStatus
from feeds.simulator.catalog import simulated_symbols
from tests.app.serving import running
from tests.app.test_instruments import LISTED, info, venue
from tests.app.test_venue_faults import Watcher
from tests.waiting import eventually

HALTED_REASON = "halted: the venue says BREAK"


def test_a_carried_instrument_that_stops_trading_or_disappears_is_halted() -> None:
    configured = venue(["BTC-USDT", "ETH-USDT", "ETH-BRL"])
    carried = {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT", "ETH-BRL": "ETHBRL"}
    now = [info("BTCUSDT", "BTC-USDT"), info("ETHUSDT", "ETH-USDT", TradingStatus.HALTED)]
    plan = plan_refresh(configured, carried, {}, LISTED, now)
    assert plan == RefreshPlan(
        halt={"ETH-USDT": HALTED_REASON, "ETH-BRL": DELISTED},
        resume=(),
        add={},
        declare={},
        not_added=(),
        resized=(),
    )
    # Told once: the same reason next time changes nothing, a new one is told.
    halted = dict(plan.halt)
    assert plan_refresh(configured, carried, halted, now, now).halt == {}
    gone = [info("BTCUSDT", "BTC-USDT")]
    assert plan_refresh(configured, carried, halted, now, gone).halt == {"ETH-USDT": DELISTED}


def test_a_halted_instrument_trading_again_resumes_or_is_added() -> None:
    configured = venue(["BTC-USDT", "LUNA-USDT"])
    carried = {"BTC-USDT": "BTCUSDT"}  # LUNA was halted at start: never subscribed
    halted = {"BTC-USDT": HALTED_REASON, "LUNA-USDT": HALTED_REASON}
    now = [info("BTCUSDT", "BTC-USDT"), info("LUNAUSDT", "LUNA-USDT")]
    plan = plan_refresh(configured, carried, halted, LISTED, now)
    assert (plan.resume, plan.add, plan.halt) == (("BTC-USDT",), {"LUNA-USDT": "LUNAUSDT"}, {})
    delisted = plan_refresh(configured, carried, halted, LISTED, [info("BTCUSDT", "BTC-USDT")])
    assert delisted.declare == {"LUNA-USDT": DELISTED}


def test_new_pattern_matches_are_added_within_max_instruments() -> None:
    configured = venue(["*-USDT"], max_instruments=3)
    carried = {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"}
    now = [
        *LISTED,
        info("XRPUSDT", "XRP-USDT"),
        info("ADAUSDT", "ADA-USDT"),
        info("DOTUSDT", "DOT-USDT", TradingStatus.HALTED),
    ]
    plan = plan_refresh(configured, carried, {}, LISTED, now)
    assert plan.add == {"ADA-USDT": "ADAUSDT"}  # LUNA and DOT do not trade
    assert plan.not_added == ("XRP-USDT",)


def test_tick_and_lot_size_changes_are_seen() -> None:
    configured = venue(["BTC-USDT"])
    before = info("BTCUSDT", "BTC-USDT")
    now = replace(before, tick=Decimal("0.1"))
    plan = plan_refresh(configured, {"BTC-USDT": "BTCUSDT"}, {}, [before], [now])
    assert plan.resized == ((before, now),)


def test_the_refresh_interval_is_a_venue_setting() -> None:
    assert venue(["BTC-USDT"]).metadata_refresh_seconds == 3600.0
    assert venue(["BTC-USDT"], metadata_refresh_seconds=0).metadata_refresh_seconds == 0
    with pytest.raises(Exception, match="metadata_refresh_seconds must be 0 \\(never\\) or"):
        settings_from_dict(
            {"venues": [{"id": "okx", "symbols": ["BTC-USDT"], "metadata_refresh_seconds": -1}]}
        )


async def _refreshes(server_http: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(server_http + "/metrics")).text
    values = {}
    for line in text.splitlines():
        if line.startswith("marketcast_feed_metadata_refresh") and 'venue="binance"' in line:
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    return values


async def test_the_running_server_follows_the_venue_catalog(tmp_path: Path) -> None:
    """Binance's simulator lists BTC and ETH against USDT (SOL not yet); the server
    selects ``*-USDT`` and refreshes every 0.3 s. ETH halts and comes back, SOL is
    listed and gets carried, and a refresh that fails keeps everything served."""
    async with build_simulator("binance", updates_per_second=20, seed=3) as simulator:
        simulator.set_listing("SOLUSDT", None)
        urls = {"ws_url": simulator.ws_url, "rest_url": simulator.rest_url}
        binance = venue(["*-USDT"], metadata_refresh_seconds=0.3, **urls)
        settings = Settings.demo().with_port(0).with_storage_path(str(tmp_path / "m.db"))
        settings = replace(settings, venues=(binance,))
        btc, eth, sol = "binance:BTC-USDT", "binance:ETH-USDT", "binance:SOL-USDT"
        async with running(settings) as server, connect(server.url) as ws:
            registry = server.registry
            await eventually(lambda: registry.is_live(btc) and registry.is_live(eth), "live")
            assert registry.status(sol) is None
            watcher = Watcher()
            reader = asyncio.create_task(watcher.read(ws))
            await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "channel": "status"}).decode())

            simulator.set_listing("ETHUSDT", TradingStatus.HALTED)
            simulator.set_listing("SOLUSDT", TradingStatus.TRADING)
            await eventually(lambda: "halted" in watcher.states(eth, 0), "ETH halted, told")
            status = registry.status(eth)
            assert status is not None
            assert (status.state, status.reason) == (InstrumentState.HALTED, HALTED_REASON)
            await eventually(lambda: registry.is_live(sol), "SOL listed, then carried")
            # As for ETH below: the registry is live before the subscriber read the status.
            await eventually(lambda: "live" in watcher.states(sol, 0), "SOL live, told")
            assert registry.is_live(btc)

            simulator.set_listing("ETHUSDT", TradingStatus.TRADING)
            await eventually(lambda: registry.is_live(eth), "ETH trades again")
            # The registry is live before the subscriber has read the status message.
            await eventually(lambda: watcher.states(eth, 0)[-1:] == ["live"], "ETH live, told")
            assert watcher.states(eth, 0)[-2:] == ["syncing", "live"]

            refresher = server.refreshers["binance"]
            assert refresher.counters.instruments_halted == 1
            assert refresher.counters.instruments_resumed == 1
            assert refresher.counters.instruments_added == 1
            assert set(refresher.carried) == {"BTC-USDT", "ETH-USDT", "SOL-USDT"}

            for status_code, body in ((500, b'{"msg":"down"}'), (200, b"not json {")):
                failures = refresher.counters.metadata_refresh_failures
                simulator.fail_rest(status_code, body)
                await eventually(
                    lambda f=failures: refresher.counters.metadata_refresh_failures > f,
                    f"a refresh failed on HTTP {status_code}",
                )
            simulator.restore_rest()
            assert all(map(registry.is_live, (btc, eth, sol)))
            refreshes = refresher.counters.metadata_refreshes
            await eventually(
                lambda: refresher.counters.metadata_refreshes > refreshes, "refreshing again"
            )
            counters = await _refreshes(server.http_url)
            assert counters["marketcast_feed_metadata_refreshes_total"] >= 2
            assert counters["marketcast_feed_metadata_refresh_failures_total"] >= 2
            reader.cancel()


async def test_a_configured_instrument_halted_at_start_is_carried_once_it_trades(
    tmp_path: Path,
) -> None:
    """LUNA-USDT is halted at start (never subscribed); once the venue trades it, a new
    connection carries it. BTC-USDT, delisted meanwhile, is halted with that reason."""
    binance = venue(["BTC-USDT", "ETH-USDT", "LUNA-USDT"], simulate=True)
    binance = replace(binance, metadata_refresh_seconds=0.3)
    settings = Settings.demo().with_port(0).with_storage_path(str(tmp_path / "m.db"))
    settings = replace(settings, venues=(binance,))
    btc, eth, luna = "binance:BTC-USDT", "binance:ETH-USDT", "binance:LUNA-USDT"
    async with running(settings) as server:
        registry, simulator = server.registry, server.simulators["binance"]
        await eventually(lambda: registry.is_live(btc) and registry.is_live(eth), "live")
        status = registry.status(luna)
        assert status is not None and status.state is InstrumentState.HALTED
        connections = len(server.refreshers["binance"].runners)
        simulator.set_listing("LUNAUSDT", TradingStatus.TRADING)
        simulator.set_listing("BTCUSDT", None)
        await eventually(lambda: registry.is_live(luna), "LUNA carried")
        await eventually(
            lambda: (status := registry.status(btc)) is not None and status.reason == DELISTED,
            "BTC delisted",
        )
        assert registry.status(btc).state is InstrumentState.HALTED  # type: ignore[union-attr]
        assert registry.is_live(eth)
        assert len(server.refreshers["binance"].runners) == connections + 1


@pytest.mark.parametrize("kind", list(VENUE_KINDS))
async def test_every_venue_s_refresh_sees_a_halt_and_a_failure(kind: str) -> None:
    """Each venue's own metadata (REST, paged, or Kraken's websocket snapshot) read again
    from its simulator: a halted instrument is seen; a failed refresh changes nothing."""
    listed = simulated_symbols(kind)
    first, second = (spec.symbol for spec in listed[:2])
    async with build_simulator(kind, updates_per_second=10, seed=2) as simulator:
        endpoints = simulator_endpoints(VenueSettings(id=kind, symbols={}), simulator)
        canonical = {spec.symbol: VENUE_KINDS[kind].canonical(spec.symbol) for spec in listed}
        configured = VenueSettings(
            id=kind, symbols={canonical[first]: first, canonical[second]: second}
        )
        resolved = await learn_instruments(configured, endpoints)
        registry = BookRegistry()
        refresher = MetadataRefresher(
            configured,
            resolved,
            endpoints,
            runners=[],
            sink=registry,
            start_runners=lambda venue: [],
        )
        async with httpx.AsyncClient() as http:
            assert await refresher.refresh(http)
            assert refresher.halted == {}
            simulator.set_listing(second, TradingStatus.HALTED)
            assert await refresher.refresh(http)
            assert list(refresher.halted) == [canonical[second]]
            assert refresher.counters.instruments_halted == 1
            if endpoints[1] is not None:  # a REST venue (Kraken's metadata is a websocket)
                simulator.fail_rest(503)
                assert not await refresher.refresh(http)
                assert refresher.counters.metadata_refresh_failures == 1
                assert list(refresher.halted) == [canonical[second]]
