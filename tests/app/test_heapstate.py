"""The heap keeper's counts on /stats (``heap``) and /metrics (``marketcast_heap_*``):
every role ``marketcast run`` starts shows them (the ingest, edge and positions shard
over a real nats-server), a reclaim moves them, and a node built without a keeper has
neither. Nodes with a keeper run in processes of their own: a keeper freezes the whole
process's heap, which must not leak into the test run."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.runtime import serve
from bus.natsserver import NatsServer, free_port
from tests.app.heap_node import GARBAGE
from tests.app.test_end_to_end import demo_settings
from tests.metrics_pages import unlabelled_samples
from tests.waiting import within

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[auth]
secret = "a heap test secret, long enough"
[simulator]
updates_per_second = 50.0
[[venues]]
id = "binance"
symbols = ["BTC-USDT"]
simulate = true
"""
STATS_KEYS = {
    "allocated_blocks",
    "reclaim_at_blocks",
    "frozen_objects",
    "reclaim_at_frozen",
    "full_passes",
    "frozen_walks",
    "reclaims",
    "reclaimed_objects",
    "last_reclaim_ms",
}
FAMILIES = {
    "marketcast_heap_allocated_blocks": "gauge",
    "marketcast_heap_reclaim_at_blocks": "gauge",
    "marketcast_heap_frozen_objects": "gauge",
    "marketcast_heap_reclaim_at_frozen": "gauge",
    "marketcast_heap_full_passes": "counter",
    "marketcast_heap_frozen_walks": "counter",
    "marketcast_heap_reclaims": "counter",
    "marketcast_heap_reclaimed_objects": "counter",
    "marketcast_heap_last_reclaim_seconds": "gauge",
}


def heap_families(text: str) -> dict[str, str]:
    """The ``marketcast_heap_*`` families of a /metrics page (it parses), with their
    types."""
    return {
        family.name: family.type
        for family in text_string_to_metric_families(text)
        if family.name.startswith("marketcast_heap_")
    }


@contextlib.asynccontextmanager
async def marketcast_run(config: Path, role: str, bus: str, db: Path) -> AsyncIterator[str]:
    """``marketcast run --role ROLE`` as a user starts it; its HTTP URL once it printed
    its banner (the keeper starts then)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "app.cli", "run", "--config", str(config), "--role", role),
        *("--bus", bus, "--port", str(port), "--db", str(db)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []

    async def banner() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            lines.append(line.decode(errors="replace").rstrip())
            if "is serving" in lines[-1]:
                return
        raise AssertionError(f"marketcast run --role {role} exited:\n" + "\n".join(lines))

    try:
        await within(banner(), f"the {role}'s banner", limit=60)
        draining = asyncio.create_task(process.communicate())  # the pipe never fills
        yield f"http://127.0.0.1:{port}"
        process.terminate()
        await within(draining, f"the {role}'s exit")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_every_role_of_marketcast_run_shows_its_heap_keeper(tmp_path: Path) -> None:
    config = tmp_path / "heap.toml"
    config.write_text(CONFIG)
    pages: dict[str, tuple[str, dict[str, Any]]] = {}
    with NatsServer() as nats:
        async with contextlib.AsyncExitStack() as stack:
            urls = {
                role: await stack.enter_async_context(
                    marketcast_run(config, role, nats.url, tmp_path / f"{role}.db")
                )
                for role in ("all", "ingest", "edge", "positions")
            }
            async with httpx.AsyncClient() as http:
                for role, url in urls.items():
                    metrics = (await http.get(f"{url}/metrics")).text
                    stats = (await http.get(f"{url}/stats")).json()
                    pages[role] = metrics, stats
    for role, (metrics, stats) in pages.items():
        assert f'role="{role}"' in metrics.split("marketcast_build_info{")[1].split("}")[0]
        assert heap_families(metrics) == FAMILIES, role
        values = unlabelled_samples(metrics)
        frozen = values["marketcast_heap_frozen_objects"]
        assert 0 < frozen < values["marketcast_heap_reclaim_at_frozen"], role
        blocks = values["marketcast_heap_allocated_blocks"]
        assert 0 < blocks < values["marketcast_heap_reclaim_at_blocks"], role
        assert set(stats["heap"]) == STATS_KEYS, role
        assert stats["heap"]["frozen_objects"] > 0, role


def test_a_reclaim_moves_the_counts_on_both_pages(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.app.heap_node", str(tmp_path / "heap.db")],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pages = orjson.loads(result.stdout)
    before, after = pages["before"], pages["after"]
    for page in (before, after):
        assert heap_families(page["metrics"]) == FAMILIES
    values = {
        moment: unlabelled_samples(pages[moment]["metrics"]) for moment in ("before", "after")
    }
    assert values["before"]["marketcast_heap_reclaims_total"] == 0
    assert values["before"]["marketcast_heap_reclaimed_objects_total"] == 0
    assert values["before"]["marketcast_heap_last_reclaim_seconds"] == 0
    assert values["after"]["marketcast_heap_reclaims_total"] == 1
    assert values["after"]["marketcast_heap_reclaimed_objects_total"] >= GARBAGE
    assert values["after"]["marketcast_heap_last_reclaim_seconds"] > 0
    assert (
        values["after"]["marketcast_heap_full_passes_total"]
        > values["before"]["marketcast_heap_full_passes_total"]
    )
    assert before["stats"]["heap"]["frozen_objects"] > 0
    assert before["stats"]["heap"]["reclaims"] == 0
    heap = after["stats"]["heap"]
    assert heap["reclaims"] == 1
    assert heap["reclaimed_objects"] == values["after"]["marketcast_heap_reclaimed_objects_total"]
    assert heap["last_reclaim_ms"] == pytest.approx(
        values["after"]["marketcast_heap_last_reclaim_seconds"] * 1000, abs=0.001
    )
    assert heap["frozen_objects"] > 0


async def test_a_node_without_a_keeper_shows_no_heap(tmp_path: Path) -> None:
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(demo_settings(tmp_path / "m.db"), on_ready=ready.set_result))
    try:
        server = await asyncio.wait_for(ready, 15)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{server.http_url}/metrics")).text
            stats = (await http.get(f"{server.http_url}/stats")).json()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert heap_families(metrics) == {}
    assert "heap" not in stats
