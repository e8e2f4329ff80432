"""``marketcast replay`` on recorded real traffic, and record -> replay round trips."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.commands.record import record
from app.commands.replay import replay_file
from app.settings import Settings, SimulatorSettings
from book.registry import BookRegistry
from book.snapshot import levels_text
from feeds.recordings import FrameKind, read_recording
from tests.recorded import (
    BINANCE_SPOT_CRYPTOFEED,
    BINANCE_SPOT_HFT,
    BINANCE_USDM_CRYPTOFEED,
    BINANCE_USDM_HFT,
    KRAKEN_V1,
    KRAKEN_V2,
    OKX_CRYPTOFEED,
)


def run_replay(path: Path, *, quiet: bool = False) -> tuple[int, list[dict[str, Any]]]:
    out = io.BytesIO()
    status = replay_file(str(path), venue=None, depth=5, out=out, quiet=quiet)
    return status, [orjson.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("path", "published", "verified", "instruments"),
    [
        (BINANCE_SPOT_CRYPTOFEED, 172, 25, 4),
        (BINANCE_USDM_CRYPTOFEED, 752, 50, 4),
        (BINANCE_SPOT_HFT, 3449, 564, 1),
        (BINANCE_USDM_HFT, 6546, 629, 1),
        (KRAKEN_V1, 980, 979, 1),
        (KRAKEN_V2, 510, 510, 1),
        (OKX_CRYPTOFEED, 290, 290, 3),
    ],
)
def test_replay_of_every_sample_is_clean(
    path: Path, published: int, verified: int, instruments: int
) -> None:
    status, lines = run_replay(path)
    summary = lines[-1]
    assert status == 0
    assert summary["type"] == "summary"
    assert (summary["published"], summary["verified"]) == (published, verified)
    assert (summary["gaps"], summary["mismatches"], summary["resyncs"]) == (0, 0, 0)
    assert len(summary["live"]) == instruments
    bbos = [line for line in lines if line["type"] == "bbo"]
    books = [line for line in lines if line["type"] == "book"]
    assert len(bbos) == published
    assert len(books) == instruments
    for book in books:  # the final book's top equals the last bbo line of its instrument
        last = [b for b in bbos if b["instrument"] == book["instrument"]][-1]
        assert book["seq"] == last["seq"]
        assert book["bids"][0] == [last["bid"], last["bid_qty"]]
        assert book["asks"][0] == [last["ask"], last["ask_qty"]]


def test_replay_reports_a_removed_message(tmp_path: Path) -> None:
    frames = list(read_recording(BINANCE_SPOT_CRYPTOFEED))
    depth = [i for i, f in enumerate(frames) if "nknusdt@depth" in f.data]
    del frames[depth[20]]
    recording = tmp_path / "dropped.jsonl"
    recording.write_bytes(b"".join(replace(f, venue="binance").to_json() + b"\n" for f in frames))
    status, lines = run_replay(recording, quiet=True)
    assert status == 1
    problems = [line for line in lines if line["type"] == "problem"]
    assert [(p["instrument"], p["kind"]) for p in problems] == [("binance:NKN-USDT", "gap")]
    assert lines[-1]["gaps"] == 1
    assert lines[-1]["not_live"] == ["binance:NKN-USDT"]


async def test_record_then_replay_gives_the_live_books(tmp_path: Path) -> None:
    settings = replace(
        Settings.demo(), simulator=SimulatorSettings(updates_per_second=300.0, seed=5)
    )
    out = tmp_path / "sim.jsonl"
    live = BookRegistry()
    await record(settings, str(out), seconds=1.5, registry=live)
    frames = list(read_recording(out))
    kinds = {frame.kind for frame in frames}
    assert kinds == {FrameKind.CONNECT, FrameKind.RECV, FrameKind.HTTP, FrameKind.SEND}
    assert {frame.venue for frame in frames} == {venue.id for venue in settings.venues}
    status, lines = run_replay(out, quiet=True)
    assert status == 0
    books = {line["instrument"]: line for line in lines if line["type"] == "book"}
    # On a loaded machine a book may not be live within the recording's 1.5 s: the
    # replay must give exactly the books the live handlers published.
    published = {name for name in live.instruments() if live.get(name) is not None}
    assert published and set(books) == published
    for name, book in books.items():
        snapshot = live.get(name)
        assert snapshot is not None
        assert book["seq"] == snapshot.seq
        assert book["bids"] == levels_text(snapshot.bids[:5])
        assert book["asks"] == levels_text(snapshot.asks[:5])
