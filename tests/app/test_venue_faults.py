"""Venue faults seen end to end, for every venue id: the whole server (``app.runtime.serve``,
in-process, port 0, SQLite in a tmp dir) with that one venue simulated, and a real
websocket client subscribed to ``status`` and ``bbo`` of two instruments.

A fault of one instrument (a dropped message; a bad checksum where the venue has one)
makes that instrument stale then live, and only it, while the other's bbo frames keep
coming during the resync: the simulator holds the resync's snapshot
(``hold_snapshots``) until the client has seen three of them. A dropped connection makes
both stale, then both live.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.settings import (
    ServerSettings,
    Settings,
    SimulatorSettings,
    StorageSettings,
    VenueSettings,
)
from app.venues import VENUE_KINDS, native_symbols
from feeds.simulator.faults import Fault
from feeds.simulator.venue import LoopbackVenue
from tests.app.serving import running
from tests.waiting import eventually

SYMBOLS = {
    "binance": ("BTC-USDT", "ETH-USDT"),
    "binance-usdm": ("BTC-USDT-PERP", "ETH-USDT-PERP"),
    "coinbase": ("BTC-USD", "ETH-USD"),
    "kraken": ("BTC-USD", "ETH-USD"),
    "okx": ("BTC-USDT", "ETH-USDT"),
    "bybit": ("BTC-USDT", "ETH-USDT"),
    "bybit-linear": ("BTC-USDT-PERP", "ETH-USDT-PERP"),
}
ONE_INSTRUMENT_FAULTS = (Fault.DROP, Fault.CHECKSUM)
"""The faults that make one instrument's book wrong (``RESTART`` is not a fault for a
correct handler, so it never goes stale)."""
STREAMING_FRAMES = 3
"""bbo frames of the other instrument to see while one resyncs."""
STALE, LIVE = "stale", "live"


def one_venue(venue: str, db: Path, *, rate: float = 500.0) -> Settings:
    """``venue`` alone, simulated, with two symbols; the server on a free port."""
    symbols = native_symbols(venue, SYMBOLS[venue])
    return Settings(
        server=ServerSettings(port=0),
        storage=StorageSettings(path=str(db)),
        simulator=SimulatorSettings(updates_per_second=rate, seed=5),
        venues=(VenueSettings(id=venue, symbols=symbols, simulate=True),),
    )


@dataclass
class Watcher:
    """Every ``status`` and ``bbo`` frame a client received, in order."""

    frames: list[dict[str, Any]] = field(default_factory=list)

    async def read(self, ws: ClientConnection) -> None:
        async for message in ws:
            frame = orjson.loads(message)
            if frame["type"] in ("status", "bbo"):
                self.frames.append(frame)

    def states(self, instrument: str, since: int) -> list[str]:
        return [
            f["state"]
            for f in self.frames[since:]
            if f["type"] == "status" and f["instrument"] == instrument
        ]

    def statuses(self, since: int) -> list[tuple[str, str]]:
        return [(f["instrument"], f["state"]) for f in self.frames[since:] if f["type"] == "status"]

    def index(self, instrument: str, state: str, since: int) -> int:
        """Where the first ``state`` status frame of ``instrument`` after ``since`` is."""
        return next(
            i
            for i, f in enumerate(self.frames)
            if i >= since
            and f["type"] == "status"
            and (f["instrument"], f["state"]) == (instrument, state)
        )

    def bbo_frames(self, instrument: str, start: int, stop: int | None = None) -> int:
        return sum(
            f["type"] == "bbo" and f["instrument"] == instrument for f in self.frames[start:stop]
        )


async def _subscribe(ws: ClientConnection, instruments: list[str]) -> None:
    await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "channel": "status"}).decode())
    request = {"op": "subscribe", "id": 2, "channel": "bbo", "instruments": instruments}
    await ws.send(orjson.dumps(request).decode())


async def _one_instrument_fault(
    simulator: LoopbackVenue[Any],
    watcher: Watcher,
    fault: Fault,
    hit: str,
    hit_native: str,
    other: str,
) -> None:
    """Inject ``fault`` into ``hit`` with its resync held until ``other`` streamed."""
    mark = len(watcher.frames)
    simulator.hold_snapshots(hit_native)
    simulator.inject(fault, symbol=hit_native)
    await eventually(lambda: watcher.states(hit, mark) == [STALE], f"{fault}: stale")
    stale_at = watcher.index(hit, STALE, mark)
    await eventually(
        lambda: watcher.bbo_frames(other, stale_at) >= STREAMING_FRAMES,
        f"{fault}: {other} streams while {hit} resyncs",
    )
    simulator.release_snapshots(hit_native)
    await eventually(lambda: watcher.states(hit, mark) == [STALE, LIVE], f"{fault}: live again")
    live_at = watcher.index(hit, LIVE, mark)
    assert watcher.statuses(mark) == [(hit, STALE), (hit, LIVE)], fault
    assert watcher.bbo_frames(other, stale_at, live_at) >= STREAMING_FRAMES, fault


@pytest.mark.parametrize("venue", list(VENUE_KINDS))
async def test_faults_make_exactly_the_hit_instruments_stale_then_live(
    tmp_path: Path, venue: str
) -> None:
    assert set(SYMBOLS) == set(VENUE_KINDS)
    natives = native_symbols(venue, SYMBOLS[venue])
    hit, other = (f"{venue}:{canonical}" for canonical in SYMBOLS[venue])
    hit_native = natives[SYMBOLS[venue][0]]
    async with running(one_venue(venue, tmp_path / "faults.db")) as server:
        simulator = server.simulators[venue]
        await eventually(lambda: all(map(server.registry.is_live, (hit, other))), "both live")
        async with connect(server.url) as ws:
            watcher = Watcher()
            reader = asyncio.create_task(watcher.read(ws))
            await _subscribe(ws, [hit, other])
            await eventually(
                lambda: watcher.bbo_frames(hit, 0) > 0 and watcher.bbo_frames(other, 0) > 0,
                "bbo of both",
            )
            faults = [
                fault for fault in ONE_INSTRUMENT_FAULTS if fault in simulator.supported_faults
            ]
            assert Fault.DROP in faults
            for fault in faults:
                await _one_instrument_fault(simulator, watcher, fault, hit, hit_native, other)
            mark = len(watcher.frames)
            simulator.inject(Fault.DISCONNECT)
            await eventually(
                lambda: watcher.states(hit, mark) == watcher.states(other, mark) == [STALE, LIVE],
                "disconnect: both stale, then both live",
            )
            assert sorted(watcher.statuses(mark)) == sorted(
                [(hit, STALE), (other, STALE), (hit, LIVE), (other, LIVE)]
            )
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
