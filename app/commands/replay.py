"""``marketcast replay FILE [--venue V] [--depth N]``: recorded traffic through the real
handlers, no network. Prints JSON lines: the ``bbo`` message after every applied
message, then the final top-N ``book`` of every instrument, then a ``summary`` (gaps,
checksum and bookTicker results, resyncs). Exits 1 when the replay found a problem."""

from __future__ import annotations

import argparse
import sys
from typing import IO

import orjson

from app.exceptions import ConfigError
from app.venues import guess_venue, replay_adapter
from book.snapshot import levels_text
from feeds.recordings import read_recording
from feeds.replay import Replay
from publish.protocol import encode_bbo


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = commands.add_parser("replay", help="replay a recording through the feed handlers")
    replay.add_argument("file", help="a marketcast recording (.jsonl) or a sample-data file")
    replay.add_argument("--venue", help="venue id (default: from the file)")
    replay.add_argument("--depth", type=int, default=10, help="levels per side in final books")
    replay.add_argument("--quiet", action="store_true", help="print only books and summary")
    replay.set_defaults(command=_replay)


def _replay(args: argparse.Namespace) -> int:
    return replay_file(args.file, venue=args.venue, depth=args.depth, quiet=args.quiet)


def replay_file(
    path: str, *, venue: str | None, depth: int, quiet: bool = False, out: IO[bytes] | None = None
) -> int:
    if depth < 1:
        raise ConfigError("--depth must be at least 1")
    frames = read_recording(path)
    venue = venue or _venue_of(path)
    replay = Replay(replay_adapter(venue), capture_depth=depth)
    stream = out if out is not None else sys.stdout.buffer
    write = stream.write
    try:
        for snapshot in replay.snapshots(frames):
            if not quiet:
                write(encode_bbo(snapshot, snapshot.ts_recv) + b"\n")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for name in sorted(replay.latest):
        snap = replay.latest[name]
        book = {
            "type": "book",
            "instrument": name,
            "seq": snap.seq,
            "bids": levels_text(snap.bids[:depth]),
            "asks": levels_text(snap.asks[:depth]),
            "ts_event": snap.ts_event,
            "ts_recv": snap.ts_recv,
        }
        write(orjson.dumps(book) + b"\n")
    for problem in replay.problems:
        write(
            orjson.dumps(
                {
                    "type": "problem",
                    "ts": problem.ts,
                    "instrument": problem.instrument,
                    "kind": problem.problem.kind.value,
                    "detail": problem.problem.detail,
                }
            )
            + b"\n"
        )
    summary = replay.summary()
    write(orjson.dumps(summary) + b"\n")
    stream.flush()
    return 1 if replay.problems else 0


def _venue_of(path: str) -> str:
    frames = read_recording(path)
    first = next(iter(frames), None)
    if first is not None and first.venue:
        return first.venue
    guessed = guess_venue(path)
    if guessed is None:
        raise ConfigError(f"{path}: cannot tell the venue; pass --venue")
    return guessed
