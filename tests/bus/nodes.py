"""Roles in the test's own event loop: an ingest (``serve`` with role ingest) and edges
(``serve_edge``) over a real nats-server, each a task until its block ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from app.roles import EdgeServer, serve_edge
from app.runtime import RunningServer, serve
from app.settings import AuthSettings, BusSettings, Settings, SimulatorSettings

PREFIX = "test"
SECRET = "a test secret of enough bytes"
T = TypeVar("T")


def ingest_settings(db: Path, bus: str, *, venues: tuple[str, ...] = ("binance",)) -> Settings:
    demo = Settings.demo().with_port(0).with_storage_path(str(db))
    return replace(
        demo,
        venues=tuple(venue for venue in demo.venues if venue.id in venues),
        simulator=SimulatorSettings(updates_per_second=100.0, seed=7),
        auth=AuthSettings(secret=SECRET),
        bus=BusSettings(url=bus, prefix=PREFIX, stale_after_ms=1000),
    ).with_role("ingest")


def edge_settings(bus: str, *, port: int = 0) -> Settings:
    return (
        replace(
            Settings(),
            auth=AuthSettings(secret=SECRET),
            bus=BusSettings(url=bus, prefix=PREFIX, stale_after_ms=1000),
        )
        .with_role("edge")
        .with_port(port)
    )


@contextlib.asynccontextmanager
async def ingest_node(settings: Settings) -> AsyncIterator[RunningServer]:
    ready: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, on_ready=ready.set_result))
    try:
        yield await _started(ready, task)
    finally:
        await _stop(task)


@contextlib.asynccontextmanager
async def edge_node(settings: Settings) -> AsyncIterator[EdgeServer]:
    ready: asyncio.Future[EdgeServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_edge(settings, on_ready=ready.set_result))
    try:
        yield await _started(ready, task)
    finally:
        await _stop(task)


async def _started(ready: asyncio.Future[T], task: asyncio.Task[None]) -> T:
    done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # it failed to start: raise why
    return ready.result()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
