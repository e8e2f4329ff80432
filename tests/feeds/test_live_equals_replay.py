"""Real recorded traffic through the live path (runner over loopback websockets and HTTP,
served by the recording player) gives the same books as ``replay`` of the same file.

The player sends what the venue sent and ignores what the client sends (subscribe
frames); the books must come out the same either way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.venues import VENUE_KINDS, replay_adapter
from book.registry import BookRegistry
from feeds.recordings import read_recording
from feeds.replay import Replay
from feeds.runner import FeedRunner
from feeds.simulator.player import RecordingPlayer
from feeds.symbols import SymbolMap
from tests.recorded import (
    BINANCE_SPOT_CRYPTOFEED,
    BINANCE_SPOT_HFT,
    BINANCE_USDM_CRYPTOFEED,
    BINANCE_USDM_HFT,
    KRAKEN_V2,
    OKX_CRYPTOFEED,
)
from tests.waiting import eventually

DEPTH = 10


@pytest.mark.parametrize(
    ("path", "venue"),
    [
        (BINANCE_SPOT_CRYPTOFEED, "binance"),
        (BINANCE_USDM_CRYPTOFEED, "binance-usdm"),
        (BINANCE_SPOT_HFT, "binance"),
        (BINANCE_USDM_HFT, "binance-usdm"),
        (KRAKEN_V2, "kraken"),
        (OKX_CRYPTOFEED, "okx"),
    ],
)
async def test_live_path_books_equal_replay_books(path: Path, venue: str) -> None:
    frames = list(read_recording(path))
    replay = Replay(replay_adapter(venue), capture_depth=DEPTH)
    for _ in replay.snapshots(frames):
        pass
    assert replay.problems == []
    natives = {
        name.partition(":")[2]: replay.adapter.symbols.venue_symbol(name) for name in replay.latest
    }

    registry = BookRegistry()
    async with RecordingPlayer(frames) as player:
        adapter = VENUE_KINDS[venue].adapter(
            SymbolMap(venue, natives), player.ws_url, player.rest_url
        )
        adapter.silence_timeout = 3600.0  # the recording ends; the venue goes quiet
        adapter.app_ping_interval = 0.0
        runner = FeedRunner(adapter, sink=registry, capture_depth=DEPTH)
        task = asyncio.create_task(runner.run())
        try:
            await eventually(
                lambda: (
                    runner.counters.frames == player.frame_count
                    and all(registry.is_live(name) for name in replay.latest)
                ),
                "every frame applied and every book live",
                60,
            )
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert runner.counters.gaps == runner.counters.mismatches == 0
    for name, expected in replay.latest.items():
        live = registry.get(name)
        assert live is not None and registry.is_live(name), name
        assert (live.bids, live.asks) == (expected.bids, expected.asks), name
        assert (live.bid, live.bid_qty, live.ask, live.ask_qty) == (
            expected.bid,
            expected.bid_qty,
            expected.ask,
            expected.ask_qty,
        )
