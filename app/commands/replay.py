"""``marketcast replay FILE [--venue V] [--depth N]``: recorded traffic through the real
handlers, no network. Prints JSON lines: the ``bbo`` message after every applied
message, then the final top-N ``book`` of every instrument, any ``problem`` found, and a
``summary`` per venue (gaps, checksum and bookTicker results, resyncs, book messages per
instrument, and every venue symbol that could not be named: ``unresolved``, with its
message count). Exits 1 when the replay found a problem or a symbol it could not name.

A marketcast recording may hold several venues and connections: each connection is
replayed through its own handlers, as it was live (per-connection sequence numbers).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import IO, Any

import orjson

from app.exceptions import ConfigError
from app.instruments import recorded_metadata
from app.venues import guess_venue, replay_adapter
from book.snapshot import BookSnapshot, levels_text
from feeds.recordings import RecordedFrame, read_recording
from feeds.replay import Replay
from publish.protocol import encode_bbo


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = commands.add_parser("replay", help="replay a recording through the feed handlers")
    replay.add_argument("file", help="a marketcast recording (.jsonl) or a sample-data file")
    replay.add_argument("--venue", help="venue id (default: from the recording or file name)")
    replay.add_argument("--depth", type=int, default=10, help="levels per side in final books")
    replay.add_argument("--quiet", action="store_true", help="print only books and summary")
    replay.set_defaults(command=_replay)


def _replay(args: argparse.Namespace) -> int:
    return replay_file(args.file, venue=args.venue, depth=args.depth, quiet=args.quiet)


def replay_file(
    path: str, *, venue: str | None, depth: int, quiet: bool = False, out: IO[bytes] | None = None
) -> int:
    """Replay ``path`` (only ``venue`` if given), writing JSON lines to ``out``."""
    if depth < 1:
        raise ConfigError("--depth must be at least 1")
    stream = out if out is not None else sys.stdout.buffer
    write = stream.write
    fallback = venue or guess_venue(path)
    replays: dict[tuple[str, int], Replay] = {}
    known: dict[str, dict[str, str]] = {}
    """Venue -> venue symbol -> canonical, from the metadata recorded with the traffic."""
    try:
        for frame in read_recording(path):
            frame_venue = frame.venue or fallback
            if frame_venue is None:
                raise ConfigError(f"{path}: cannot tell the venue; pass --venue")
            if venue is not None and frame_venue != venue:
                continue
            metadata = recorded_metadata(frame_venue, frame)
            if metadata is not None:
                names = known.setdefault(frame_venue, {})
                names |= {info.symbol: info.canonical for info in metadata.instruments}
                continue
            replay = replays.get((frame_venue, frame.conn))
            if replay is None:
                names = known.setdefault(frame_venue, {})
                replay = Replay(replay_adapter(frame_venue, names), capture_depth=depth)
                replays[frame_venue, frame.conn] = replay
            for snapshot in replay.snapshots(_one(frame)):
                if not quiet:
                    write(encode_bbo(snapshot, snapshot.ts_recv) + b"\n")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for snapshot in _final_books(replays.values()):
        write(orjson.dumps(_book_line(snapshot, depth)) + b"\n")
    problems = [problem for replay in replays.values() for problem in replay.problems]
    for problem in sorted(problems, key=lambda p: p.ts):
        line = {
            "type": "problem",
            "ts": problem.ts,
            "instrument": problem.instrument,
            "kind": problem.problem.kind.value,
            "detail": problem.problem.detail,
        }
        write(orjson.dumps(line) + b"\n")
    summaries = _venue_summaries(replays)
    for summary in summaries:
        write(orjson.dumps(summary) + b"\n")
    stream.flush()
    unresolved = any(summary["unresolved"] for summary in summaries)
    return 1 if problems or unresolved else 0


def _one(frame: RecordedFrame) -> list[RecordedFrame]:
    return [frame]


def _final_books(replays: Any) -> list[BookSnapshot]:
    """The last book of every instrument, whichever connection published it."""
    latest: dict[str, BookSnapshot] = {}
    for replay in replays:
        for name, snapshot in replay.latest.items():
            if name not in latest or snapshot.ts_recv >= latest[name].ts_recv:
                latest[name] = snapshot
    return [latest[name] for name in sorted(latest)]


def _book_line(snapshot: BookSnapshot, depth: int) -> dict[str, object]:
    return {
        "type": "book",
        "instrument": snapshot.instrument,
        "seq": snapshot.seq,
        "bids": levels_text(snapshot.bids[:depth]),
        "asks": levels_text(snapshot.asks[:depth]),
        "ts_event": snapshot.ts_event,
        "ts_recv": snapshot.ts_recv,
    }


def _venue_summaries(replays: dict[tuple[str, int], Replay]) -> list[dict[str, Any]]:
    """One summary per venue: counts added up over its connections."""
    by_venue: dict[str, list[Replay]] = defaultdict(list)
    for (name, _), replay in replays.items():
        by_venue[name].append(replay)
    summaries = []
    for name in sorted(by_venue):
        parts = [replay.summary() for replay in by_venue[name]]
        summary: dict[str, Any] = {"type": "summary", "venue": name, "connections": len(parts)}
        for part in parts:
            for key, value in part.items():
                if isinstance(value, int):
                    summary[key] = summary.get(key, 0) + value
        for key in ("messages", "unresolved"):  # per symbol, added up over connections
            counts: dict[str, int] = defaultdict(int)
            for part in parts:
                for symbol, count in part[key].items():  # type: ignore[attr-defined]
                    counts[symbol] += count
            summary[key] = dict(sorted(counts.items()))
        live = {i for part in parts for i in part["live"]}  # type: ignore[attr-defined]
        seen = {i for part in parts for i in (*part["live"], *part["not_live"])}  # type: ignore[misc]
        summary["live"] = sorted(live)
        summary["not_live"] = sorted(seen - live)
        summaries.append(summary)
    return summaries
