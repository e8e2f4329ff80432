"""Scenario 7b at a tiny size: the full path into the registry and into the bus publisher
on a real nats-server, both contenders on the same book, every published message
received by the subscriber in the other process."""

from __future__ import annotations

from bench.ingestbus import IngestBusOptions, Sink, run
from bench.report import Progress

FRAMES = 3000


def test_ingest_with_and_without_the_bus_side_by_side() -> None:
    result = run(IngestBusOptions(frames=FRAMES, repeat=2, chunks=(1, 50)), Progress())

    (table,) = result.tables
    assert [(row[0], row[1], row[2], row[3]) for row in table.rows] == [
        (recording, view, chunk, str(sink))
        for recording in ("spot", "usdm")
        for view in ("depth stream", "combined connection")
        for chunk in ("1", "50")
        for sink in Sink
    ]
    for row in table.rows:
        if row[3] == str(Sink.BUS):
            published, dropped, received = (int(cell.replace(",", "")) for cell in row[6:9])
            assert published > 0 and dropped == 0
            assert received == published  # NATS delivered every one to the other process
        else:
            assert row[6:9] == ("-", "-", "-")
        assert int(row[9].replace(",", "")) >= 0  # times the run was preempted
    assert "both contenders ended on the same best bid/ask" in result.notes
    assert [target.what.split(",")[0] for target in result.targets] == [
        "spot depth stream",
        "spot combined connection",
        "usdm depth stream",
        "usdm combined connection",
    ]
    figures = result.figures
    assert all(value > 0 for key, value in figures.items() if "msgs_per_s" in key)
    for view in ("spot_depth", "spot_combined", "usdm_depth", "usdm_combined"):
        # 50 frames per loop turn: the publisher conflates what a turn produced, so the
        # one instrument's book goes out at most once a turn (plus its states). How many
        # a 1-frame turn publishes depends on the machine's speed (one flush per
        # millisecond at most while busy), so it is only checked to be there.
        assert 0 < figures[f"{view}_chunk50_published"] <= FRAMES // 50 + 2
        assert figures[f"{view}_chunk1_published"] > 0
    assert result.render().startswith("## 7b. Ingest with the bus")
