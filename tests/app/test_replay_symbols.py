"""``marketcast replay`` names every symbol it can, and reports the ones it cannot.

The Binance traffic here is synthesized, not recorded: no recording in the project's
shared data set has a pair quoted in BRL or AUD, so
``tests/fixtures/synthesized/binance/ethbrl_btcaud.jsonl`` was written from Binance's
documented formats (see the NOTICE.md beside it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson

from app.commands.replay import replay_file
from feeds.recordings import RecordedFrame, read_recording

SYNTHESIZED = Path(__file__).parents[1] / "fixtures" / "synthesized"
BRL_AUD = SYNTHESIZED / "binance" / "ethbrl_btcaud.jsonl"


def run_replay(path: Path) -> tuple[int, list[dict[str, Any]]]:
    out = io.BytesIO()
    status = replay_file(str(path), venue=None, depth=5, out=out)
    return status, [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_pairs_quoted_in_brl_and_aud_are_replayed() -> None:
    status, lines = run_replay(BRL_AUD)
    assert status == 0
    summary = lines[-1]
    assert summary["messages"] == {"binance:BTC-AUD": 4, "binance:ETH-BRL": 4}
    assert summary["unresolved"] == {}
    assert summary["live"] == ["binance:BTC-AUD", "binance:ETH-BRL"]
    # Every bookTicker named a state the rebuilt book reached, and agreed with it.
    assert (summary["published"], summary["verified"], summary["gaps"]) == (6, 3, 0)
    books = {line["instrument"]: line for line in lines if line["type"] == "book"}
    assert books["binance:ETH-BRL"]["bids"] == [["20151", "0.1"], ["20150", "0.51"], ["20145", "3"]]
    assert books["binance:ETH-BRL"]["asks"][:2] == [["20158", "0.75"], ["20160", "0.35"]]
    assert books["binance:BTC-AUD"]["asks"] == [["145125", "0.12"], ["145130", "0.25"]]


def test_a_symbol_that_cannot_be_named_is_reported_and_fails_the_replay(tmp_path: Path) -> None:
    """A pair quoted in a currency no table knows (``QQQ``): its messages cannot be
    replayed, so the summary names it with their count and the replay exits 1; the
    other pairs replay as before."""
    frames = list(read_recording(BRL_AUD))
    depth = {"e": "depthUpdate", "E": 1, "s": "FOOQQQ", "U": 1, "u": 2, "b": [], "a": []}
    ticker = {"u": 2, "s": "FOOQQQ", "b": "1.0", "B": "1", "a": "1.1", "A": "1"}
    messages = [
        {"stream": "fooqqq@depth@100ms", "data": depth},
        {"stream": "fooqqq@bookTicker", "data": ticker},
    ]
    last = frames[-1]
    extra = [
        RecordedFrame(last.ts + n, last.kind, orjson.dumps(data).decode(), venue="binance", conn=1)
        for n, data in enumerate(messages, 1)
    ]
    recording = tmp_path / "unknown-quote.jsonl"
    recording.write_bytes(b"".join(frame.to_json() + b"\n" for frame in [*frames, *extra]))
    status, lines = run_replay(recording)
    assert status == 1
    summary = lines[-1]
    assert summary["unresolved"] == {"FOOQQQ": 2}
    assert summary["messages"] == {"binance:BTC-AUD": 4, "binance:ETH-BRL": 4}
    assert summary["live"] == ["binance:BTC-AUD", "binance:ETH-BRL"]
    assert not [line for line in lines if line["type"] == "problem"]
