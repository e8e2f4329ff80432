"""Scenario 1 at a tiny size: every contender runs, agrees, and the report is whole."""

from __future__ import annotations

import pytest

from bench.ingest import (
    RECORDINGS,
    IngestOptions,
    Recording,
    bare_loop,
    cryptofeed_path,
    load_views,
    marketcast_path,
    run,
)
from bench.report import Progress

FRAMES = 3000


def test_ingest_report_has_every_contender_and_positive_rates() -> None:
    result = run(IngestOptions(frames=FRAMES, repeat=1, peer=False), Progress())

    (table,) = result.tables
    assert [(row[0], row[1], row[2]) for row in table.rows] == [
        (recording, view, contender)
        for recording in ("spot", "usdm")
        for view in ("depth stream", "combined connection")
        for contender in (
            "orjson.loads alone",
            "bare orjson + SortedDict loop",
            "marketcast full path",
        )
    ]
    assert sorted(result.figures) == sorted(
        f"{recording}_{view}_{figure}"
        for recording in ("spot", "usdm")
        for view in ("depth", "combined")
        for figure in (
            "marketcast_msgs_per_s",
            "bare_msgs_per_s",
            "orjson_msgs_per_s",
            "marketcast_levels_per_s",
        )
    )
    assert all(value > 0 for value in result.figures.values())
    assert [target.what for target in result.targets] == [
        "spot depth stream: marketcast / bare loop messages/s",
        "usdm depth stream: marketcast / bare loop messages/s",
    ]
    assert "every contender ended on the same best bid/ask" in result.notes
    assert result.render().startswith("## 1. Ingest")


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda r: r.name)
def test_the_floor_and_marketcast_end_on_the_same_book(recording: Recording) -> None:
    for view in load_views(recording, FRAMES):
        ours = marketcast_path(view.frames, view.recording.futures)
        assert ours[0] is not None and ours[2] is not None and ours[0] < ours[2]
        assert bare_loop(view.frames, view.recording.futures) == ours


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda r: r.name)
def test_cryptofeed_peer_ends_on_the_same_book(recording: Recording) -> None:
    pytest.importorskip("cryptofeed")
    (depth, _) = load_views(recording, FRAMES)
    futures = depth.recording.futures
    ours = marketcast_path(depth.frames, futures)
    assert cryptofeed_path(depth.frames, futures) == ours
    assert cryptofeed_path(depth.frames, futures, read_top=False) == ours
