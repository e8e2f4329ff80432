"""A demo node with a heap keeper, in a process of its own (a keeper freezes the whole
process's heap, which must not leak into the test run)::

    python -m tests.app.heap_node DB

Once ready it starts the keeper as ``marketcast run`` does, reads /metrics and /stats
over HTTP, freezes ``GARBAGE`` cycles that then become unreachable, reclaims them, reads
both pages again and prints ``{"before": {"metrics": ..., "stats": ...}, "after": ...}``
as one JSON line. It never starts ``HeapKeeper.run``: the one reclaim is the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from app.heap import HeapKeeper
from app.runtime import RunningServer, serve
from tests.app.test_end_to_end import demo_settings

GARBAGE = 1_000


class Node:
    """One object of a reference cycle."""

    def __init__(self) -> None:
        self.self = self


async def read_pages(http_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{http_url}/metrics")).text
        stats = (await http.get(f"{http_url}/stats")).json()
    return {"metrics": metrics, "stats": stats}


async def main(db: Path) -> None:
    keeper = HeapKeeper()
    ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(demo_settings(db), on_ready=ready.set_result, heap=keeper))
    try:
        server = await asyncio.wait_for(ready, 15)
        keeper.start()
        before = await read_pages(server.http_url)
        garbage = [Node() for _ in range(GARBAGE)]
        gc.collect()  # a full pass: they survive it, so the keeper freezes them
        del garbage  # unreachable now, and frozen: only a reclaim frees them
        keeper.reclaim()
        after = await read_pages(server.http_url)
    finally:
        keeper.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    print(orjson.dumps({"before": before, "after": after}).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
