"""``marketcast replay`` names a venue's symbols by the metadata recorded with the
traffic (``marketcast record`` writes it first): a pair in a quote currency no table
knows is replayed when the recording says what it is."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson

from app.commands.replay import replay_file
from feeds.recordings import FrameKind, RecordedFrame, RecordingWriter, read_recording
from tests.app.test_replay_symbols import BRL_AUD

EXCHANGE_INFO = {
    "timezone": "UTC",
    "serverTime": 1733216400000,
    "symbols": [
        {
            "symbol": "FOOQQQ",
            "status": "TRADING",
            "baseAsset": "FOO",
            "quoteAsset": "QQQ",
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.10000000"},
                {"filterType": "LOT_SIZE", "stepSize": "1.00000000"},
            ],
        }
    ],
}


def recording(tmp_path: Path, *, with_metadata: bool) -> Path:
    """The synthesized BRL/AUD slice plus FOOQQQ messages, with or without the
    ``exchangeInfo`` response ahead of them."""
    frames = list(read_recording(BRL_AUD))
    first, last = frames[0], frames[-1]
    depth = {"e": "depthUpdate", "E": 1, "s": "FOOQQQ", "U": 1, "u": 2, "b": [], "a": []}
    extra = [
        RecordedFrame(
            last.ts + 1,
            FrameKind.RECV,
            orjson.dumps({"stream": "fooqqq@depth@100ms", "data": depth}).decode(),
            venue="binance",
            conn=1,
        )
    ]
    metadata = RecordedFrame(
        first.ts - 1,
        FrameKind.HTTP,
        orjson.dumps(EXCHANGE_INFO).decode(),
        "https://api.binance.com/api/v3/exchangeInfo",
        "binance",
    )
    path = tmp_path / "rec.jsonl"
    with RecordingWriter(path) as writer:
        for frame in [*([metadata] if with_metadata else []), *frames, *extra]:
            writer.write(frame)
    return path


def summary(path: Path) -> tuple[int, dict[str, Any]]:
    out = io.BytesIO()
    status = replay_file(str(path), venue=None, depth=5, out=out)
    return status, orjson.loads(out.getvalue().splitlines()[-1])


def test_recorded_metadata_names_a_symbol_no_table_knows(tmp_path: Path) -> None:
    status, without = summary(recording(tmp_path, with_metadata=False))
    assert status == 1 and without["unresolved"] == {"FOOQQQ": 1}
    status, named = summary(recording(tmp_path, with_metadata=True))
    assert named["unresolved"] == {}
    assert named["messages"] == {"binance:BTC-AUD": 4, "binance:ETH-BRL": 4, "binance:FOO-QQQ": 1}
