"""``marketcast replay`` output pinned byte for byte on every recorded fixture.

The feed session (the event -> action decision table shared by the runner and replay)
must not change what replay prints: each case's output is compared with the SHA-256
of the output it had before the session was introduced (since then, only the summary
line has changed: it gained book messages per instrument and the unresolved symbols).
The damaged variants (one book message removed) pin the resync path too. If the output
changes on purpose, explain it in the commit and update the digests.
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
            "709f99bde50bd1d9b64c1c94a5c260c54203d18338eb566f9ad798fe8567c5b7",
        ),
        (
            BINANCE_SPOT_CRYPTOFEED,
            10,
            "fa2db3241499a92a798704284cc03007bd862feb51996aacb904551b13772056",
        ),
        (
            BINANCE_USDM_CRYPTOFEED,
            5,
            "79521efc1e43efe3c853f49b3c4bac75ea82f4c32bfdf62c3d2ee9c3e6cf3777",
        ),
        (
            BINANCE_USDM_CRYPTOFEED,
            10,
            "779e4e7fd64bcacb086bb404833dd779afe0be7dd1e47d97ce9a3e7eaddb1859",
        ),
        (BINANCE_SPOT_HFT, 5, "984bc5a6747a33badb501255545c1142aa66cab2fa0f6e23c844a3e7536b3d58"),
        (BINANCE_SPOT_HFT, 10, "d1a0a4664ba7049ddd077c83338428f6903a7f2a2125acc95c137299f5d6ab74"),
        (BINANCE_USDM_HFT, 5, "e1bd6688dee7446417ddc772eaf9c9cac7d90044e23bec43bce0f19d15dfc63d"),
        (BINANCE_USDM_HFT, 10, "691704965fc8e08e5477e75e6b426b3a102e2d38f22dbe8a92955e7d2c8120fa"),
        (KRAKEN_V1, 5, "0651ca963ce2bfe8044a114307a9d7a7ee35ff9f364d6925ec66b916ee6bba39"),
        (KRAKEN_V1, 10, "e042956b0313607400ef4c115cb23d3bd14eec711432b79252735b233bde9278"),
        (KRAKEN_V2, 5, "873fc96ed2db48a58ab0057614ffb08809086f6050ad706c3a72b6fdb4786cb5"),
        (KRAKEN_V2, 10, "b29b477265f31f31c0c627c8362bc7bfa2a731a2ae7ee38e4d1e535c1761e553"),
        (OKX_CRYPTOFEED, 5, "29ca10c83618c191df755358dacf97f905225026dac60930d90218e846fae44e"),
        (OKX_CRYPTOFEED, 10, "a2d45443c51b43ca38b5b1b9fc5ed2d5f7962eb776a1a28ad3d6c8f070f636bc"),
    ],
)
def test_replay_output_is_unchanged(path: Path, depth: int, digest: str) -> None:
    assert replay_digest(path, depth) == (0, digest)


@pytest.mark.parametrize(
    ("path", "digest"),
    [
        (
            BINANCE_SPOT_CRYPTOFEED,
            "f6d4c4e594101db8a163593b97511a60db00d858620e23c9c9987cf09b0e1eff",
        ),
        (
            BINANCE_USDM_CRYPTOFEED,
            "8c260f4816da9218beec6a089d82192ae72c0b33902789784ee63b0de3544ec7",
        ),
        (KRAKEN_V1, "be2774e0f60c9dd4525787d43a0e72f2ea1fa4dfb58b017460fcb27006038568"),
        (KRAKEN_V2, "1c0c132a9f764c4d275dc11a5a8f53293cd248509ee435948cc260ba881140b3"),
        (OKX_CRYPTOFEED, "adcb166923d77b01cd93e9b6c0733cb825597c689410f7c63e43866eaaa93673"),
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
