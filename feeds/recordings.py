"""Read recorded venue traffic, in marketcast's own format and the public sample formats.

- marketcast (``*.jsonl``): one JSON object per line, ``{"ts": <recv ns>, "venue": ..,
  "conn": <id>, "kind": "recv|send|connect|http", "url": .., "data": "<raw text>"}``.
- cryptofeed (``*.ws.N.0`` / ``*.http.N.0``): ``url <-> ts`` marks a connect,
  ``url <- ts: json`` a message sent, ``ts: json`` a message received and
  ``url -> ts: body`` an HTTP response; ``ts`` is seconds since the epoch.
- hftbacktest (``*.gz``): gzip text, ``<recv ns> <raw json>`` per line; the REST
  snapshot is an inline ``{"lastUpdateId":...}`` line for the file's one symbol.
- python-kraken-sdk (``orderbook-v*.json``): one document ``{"init": .., "updates": [..]}``.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import orjson


class FrameKind(StrEnum):
    RECV = "recv"
    SEND = "send"
    CONNECT = "connect"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    ts: int
    kind: FrameKind
    data: str
    url: str = ""
    venue: str = ""
    conn: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "ts": self.ts,
                "venue": self.venue,
                "conn": self.conn,
                "kind": self.kind.value,
                "url": self.url,
                "data": self.data,
            }
        )


class RecordingWriter:
    """Appends frames to a marketcast recording (``*.jsonl``), one JSON object per line.

    ``write`` is a buffered file write (no flush per frame); ``close`` flushes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = self.path.open("wb")
        self.frames = 0

    def write(self, frame: RecordedFrame) -> None:
        self._file.write(frame.to_json() + b"\n")
        self.frames += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_recording(path: str | Path) -> Iterator[RecordedFrame]:
    """Every frame of a recording, in file order (and, for cryptofeed, with its
    ``.http`` companion's snapshots merged in by timestamp)."""
    path = Path(path)
    name = path.name
    if name.endswith(".jsonl"):
        return _read_marketcast(path)
    if name.endswith(".gz"):
        return _read_hftbacktest(path)
    if ".ws." in name:
        return _read_cryptofeed_pair(path)
    if ".http." in name:
        return _read_cryptofeed(path)
    if name.endswith(".json"):
        return _read_kraken_sdk(path)
    raise ValueError(f"unknown recording format: {path}")


def _read_marketcast(path: Path) -> Iterator[RecordedFrame]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                yield RecordedFrame(
                    int(obj["ts"]),
                    FrameKind(obj["kind"]),
                    str(obj["data"]),
                    url=str(obj.get("url", "")),
                    venue=str(obj.get("venue", "")),
                    conn=int(obj.get("conn", 0)),
                )
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a marketcast recording line") from exc


def _read_hftbacktest(path: Path) -> Iterator[RecordedFrame]:
    symbol = path.name.partition("_")[0].upper()
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            ts, _, data = line.rstrip("\n").partition(" ")
            if data.startswith('{"lastUpdateId"'):
                yield RecordedFrame(int(ts), FrameKind.HTTP, data, url=f"depth?symbol={symbol}")
            else:
                yield RecordedFrame(int(ts), FrameKind.RECV, data)


def _seconds_to_ns(text: str) -> int:
    whole, _, frac = text.strip().partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def _read_cryptofeed(path: Path) -> Iterator[RecordedFrame]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if not line:
                continue
            if " <-> " in line:
                url, _, ts = line.partition(" <-> ")
                yield RecordedFrame(_seconds_to_ns(ts), FrameKind.CONNECT, "", url=url)
            elif " <- " in line and line.index(" <- ") < line.find(": "):
                url, _, rest = line.partition(" <- ")
                ts, _, data = rest.partition(": ")
                yield RecordedFrame(_seconds_to_ns(ts), FrameKind.SEND, data, url=url)
            elif " -> " in line and line.index(" -> ") < line.find(": "):
                url, _, rest = line.partition(" -> ")
                ts, _, data = rest.partition(": ")
                yield RecordedFrame(_seconds_to_ns(ts), FrameKind.HTTP, data, url=url)
            else:
                ts, _, data = line.partition(": ")
                yield RecordedFrame(_seconds_to_ns(ts), FrameKind.RECV, data)


def _read_cryptofeed_pair(path: Path) -> Iterator[RecordedFrame]:
    """The websocket file with the ``.http`` companion's responses merged by time."""
    companion = path.with_name(path.name.replace(".ws.", ".http.").rsplit(".", 2)[0] + ".0.0")
    http = list(_read_cryptofeed(companion)) if companion.exists() else []
    ws = list(_read_cryptofeed(path))
    merged = sorted(http + ws, key=lambda frame: frame.ts)  # stable: ties keep file order
    yield from merged


def _read_kraken_sdk(path: Path) -> Iterator[RecordedFrame]:
    """``init`` is the first message (v2) or the list of messages received before the
    updates (v1: system status, pong, subscription status, snapshot)."""
    document = orjson.loads(path.read_bytes())
    init = document["init"]
    # A v1 channel message is itself an array, but one that starts with its channel id.
    first = init if isinstance(init, list) and init and not isinstance(init[0], int) else [init]
    for index, message in enumerate([*first, *document["updates"]]):
        yield RecordedFrame(index, FrameKind.RECV, orjson.dumps(message).decode())
