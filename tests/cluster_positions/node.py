"""One cluster node in its own process, for fault tests (SIGKILL needs a process):

    python -m tests.cluster_positions.node shard BUS_URL SHARD SHARDS STORAGE_JSON
    python -m tests.cluster_positions.node edge BUS_URL SHARDS

``STORAGE_JSON`` holds ``[storage]`` keys. Prints ``READY`` (an edge: ``READY <ws url>``)
once it serves and has BTC from the bus, then runs until killed. The prefix, tokens and
timeouts are those of ``tests.cluster_positions.cluster``.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from app.positions_role import RunningShard, serve_shard
from app.settings import StorageSettings
from tests.cluster_positions.cluster import BTC, edge, place, settings_for
from tests.waiting import eventually

ACK_TIMEOUT_MS = 1_500


async def run_shard(url: str, shard: int, shards: int, storage: StorageSettings) -> None:
    async def announce(running: RunningShard) -> None:
        await eventually(lambda: running.registry.status(BTC) is not None, "the shard sees BTC")
        print("READY", flush=True)

    def ready(running: RunningShard) -> None:
        announcing.add(asyncio.create_task(announce(running)))

    announcing: set[asyncio.Task[None]] = set()
    settings = settings_for(storage, ack_timeout_ms=ACK_TIMEOUT_MS)
    await serve_shard(settings, place(url, shards=shards, shard=shard), on_ready=ready)


async def run_edge(url: str, shards: int) -> None:
    async with edge(place(url, shards=shards), ack_timeout=ACK_TIMEOUT_MS / 1000) as node:
        await eventually(lambda: node.registry.status(BTC) is not None, "the edge sees BTC")
        print("READY", node.url, flush=True)
        await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    role, url, *rest = argv
    if role == "shard":
        shard, shards, storage = int(rest[0]), int(rest[1]), orjson.loads(rest[2])
        asyncio.run(run_shard(url, shard, shards, StorageSettings(**storage)))
    else:
        asyncio.run(run_edge(url, int(rest[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
