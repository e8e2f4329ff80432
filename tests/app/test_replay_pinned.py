"""``marketcast replay`` output pinned byte for byte on every recorded fixture.

The feed session (the event -> action decision table shared by the runner and replay)
must not change what replay prints: each case's output is compared with the SHA-256
of the output it had before the session was introduced. The damaged variants (one
book message removed) pin the resync path too. If the output changes on purpose,
explain it in the commit and update the digests.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import pytest

from app.commands.replay import replay_file
from app.venues import guess_venue
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


def replay_digest(path: Path, depth: int, *, quiet: bool = False) -> tuple[int, str]:
    out = io.BytesIO()
    status = replay_file(str(path), venue=None, depth=depth, quiet=quiet, out=out)
    return status, hashlib.sha256(out.getvalue()).hexdigest()


@pytest.mark.parametrize(
    ("path", "depth", "digest"),
    [
        (
            BINANCE_SPOT_CRYPTOFEED,
            5,
            "00f4b004e6b3cb490a8ff65db33f4f7d6ebc8ade835f3a93b59605e61e3e37c8",
        ),
        (
            BINANCE_SPOT_CRYPTOFEED,
            10,
            "81dd51b03f78d171813b105024f9b3e2e5188aa5ebcdb4e2e7159f6051b09d13",
        ),
        (
            BINANCE_USDM_CRYPTOFEED,
            5,
            "ac780b108ccc9834a0c17219514df86b6285f9eef6c8fe113904d9d426d89985",
        ),
        (
            BINANCE_USDM_CRYPTOFEED,
            10,
            "d892d67c8b712ad2ebf25978e0310e7ffdc8cd7d3525def99d478767f2148fb4",
        ),
        (BINANCE_SPOT_HFT, 5, "a7d9a2799861bdcf85b8991ddfb28b4063840347f35d0798d262b8819c2f5676"),
        (BINANCE_SPOT_HFT, 10, "0457a81c142f7e68d583d1b3738b7160ea79c8adea1d265eb23ce42381c9c3af"),
        (BINANCE_USDM_HFT, 5, "2ee55c79ba8bdab7572c60d26f387dc706c2c62bdea3e97901e61ec07ac3cb16"),
        (BINANCE_USDM_HFT, 10, "ce1d1c11abc82316d45b4d52b073e791c5a148173f8451d529f74685e055a522"),
        (KRAKEN_V1, 5, "92ae14152225abfe8420109c598f665301a8c57e90aa763ffee69b32b1fd4a4a"),
        (KRAKEN_V1, 10, "861e3576b29b337b87fa6d4179db4cad1d4fbe6ec79b68a0919c8dafdf6fa2c8"),
        (KRAKEN_V2, 5, "f9e91dda9f3cdc6ee70bec176eeb76f32a3d2289056c3c5e900a7d4d6dbd461b"),
        (KRAKEN_V2, 10, "7c9c7164912cfbee649dc5e8169ebb8c370f13ba54f3593cff0d42872aabc69d"),
        (OKX_CRYPTOFEED, 5, "23e29ca37ffada223245db01e1548573824428bb2c88f98a5df2ff9db9d39f74"),
        (OKX_CRYPTOFEED, 10, "2afb4075078bbe6a2af7bfbf546e42150c76988f97d39b7fcd4a7199e6fe72d2"),
    ],
)
def test_replay_output_is_unchanged(path: Path, depth: int, digest: str) -> None:
    assert replay_digest(path, depth) == (0, digest)


@pytest.mark.parametrize(
    ("path", "digest"),
    [
        (
            BINANCE_SPOT_CRYPTOFEED,
            "e484879635248062426f1dd1ab7c90d019c4cf68f9b7beb0b2ae5e9dac7662b0",
        ),
        (
            BINANCE_USDM_CRYPTOFEED,
            "f20784c84b89869e056168c1f2220088102fffc81ae1a9300a43f618110c1aeb",
        ),
        (KRAKEN_V1, "d189da90e7cbf55904b6dcb241eb9ad381ad3153d6eb1f31bb31c3062da03803"),
        (KRAKEN_V2, "7c15d8f272eb129ad323b813621e9bcdb6559a770c39ffbf5bbcb49bc0bc003b"),
        (OKX_CRYPTOFEED, "b00f856cc2e8114d6fd60f4a52d1356ec357bca17d596ec0b5930007293fa996"),
    ],
)
def test_replay_output_with_a_lost_message_is_unchanged(
    path: Path, digest: str, tmp_path: Path
) -> None:
    """The 41st received frame removed: a gap or checksum problem, then the resync."""
    venue = guess_venue(str(path))
    frames = list(read_recording(path))
    received = [i for i, frame in enumerate(frames) if frame.kind is FrameKind.RECV]
    del frames[received[40]]
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(b"".join(replace(f, venue=venue).to_json() + b"\n" for f in frames))
    assert replay_digest(damaged, 5) == (1, digest)
