"""The offline demo's consolidated market looks like a real one: its venues quote around
one reference price, so the NBBO is crossed or locked only now and then."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from app.settings import Settings, SimulatorSettings
from tests.app.serving import running

SYMBOLS = ["BTC-USDT", "ETH-USDT", "BTC-USD", "ETH-USD"]
"""The demo symbols quoted on more than one venue."""
FRAMES = 1500
MAX_UNUSUAL_SHARE = 0.02
GUARD_SECONDS = 120  # fail instead of hanging; never part of an assertion


def market_of(frame: dict[str, Any]) -> str:
    """What ``market`` must say, from the frame's own prices."""
    if frame["bid"] is None or frame["ask"] is None:
        return "normal"
    bid, ask = Decimal(frame["bid"]), Decimal(frame["ask"])
    return "crossed" if bid > ask else "locked" if bid == ask else "normal"


async def test_the_demo_nbbo_is_rarely_crossed_or_locked(tmp_path: Path) -> None:
    settings = Settings.demo().with_port(0).with_storage_path(str(tmp_path / "demo.db"))
    settings = replace(settings, simulator=SimulatorSettings(updates_per_second=100.0, seed=5))
    frames: list[dict[str, Any]] = []
    async with running(settings) as server, connect(server.url) as ws:
        request = {"op": "subscribe", "id": 1, "channel": "nbbo", "symbols": SYMBOLS}
        await ws.send(orjson.dumps(request).decode())
        async with asyncio.timeout(GUARD_SECONDS):
            while len(frames) < FRAMES:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "nbbo" and frame["bid"] and frame["ask"]:
                    frames.append(frame)
    assert [frame["market"] for frame in frames] == [market_of(frame) for frame in frames]
    markets = Counter(frame["market"] for frame in frames)
    unusual = markets["crossed"] + markets["locked"]
    assert unusual / len(frames) < MAX_UNUSUAL_SHARE, markets
    venues = {(frame["symbol"], frame["bid_venue"]) for frame in frames}
    venues |= {(frame["symbol"], frame["ask_venue"]) for frame in frames}
    assert {symbol for symbol, _ in venues} == set(SYMBOLS)
    assert len(venues) > len(SYMBOLS), "the best quotes come from more than one venue"
