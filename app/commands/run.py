"""``marketcast run [--config FILE] [--role ROLE] [--bus URL]``: the server (no config: the
offline demo), as one process (``all``, the default) or one role of a cluster.

Before anything starts, ``app.preflight`` checks the port, storage and secret file, and
the open-file limit is raised (``app.fdlimit``): a problem is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from app.cluster import exit_with_parent, supervised
from app.fdlimit import raise_open_file_limit
from app.heap import HeapKeeper
from app.loop import run_until_signalled
from app.positions_role import RunningShard, check_shard_before_start, serve_shard
from app.preflight import check_before_start
from app.roles import EdgeServer, check_edge_before_start, serve_edge
from app.runtime import RunningServer, serve
from app.settings import ROLES, Settings, read_settings
from publish.exceptions import ServerStartError
from publish.storage.exceptions import StorageError

T = TypeVar("T")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run the server (no --config: the offline demo)")
    run.add_argument("--config", help="TOML config file (see config/live.example.toml)")
    run.add_argument("--port", type=int, help="override [server].port")
    run.add_argument("--db", help="override [storage].path")
    run.add_argument("--role", choices=ROLES, help="override [node].role (default: all)")
    run.add_argument("--bus", help="override [bus].url (comma-separated: a NATS cluster)")
    run.set_defaults(command=_run)


def node_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``run``: the file (or the demo) and environment, then the options."""
    settings = read_settings(args.config)
    if args.port is not None:
        settings = settings.with_port(args.port)
    if args.db is not None:
        settings = settings.with_storage_path(args.db)
    if args.role is not None:
        settings = settings.with_role(args.role)
    if args.bus is not None:
        settings = settings.with_bus(args.bus)
    return settings


def _run(args: argparse.Namespace) -> int:
    settings = node_settings(args)
    started = False
    heap = HeapKeeper()
    reclaiming: list[asyncio.Task[None]] = []

    def ready(banner_text: str) -> None:
        nonlocal started
        started = True
        heap.start()  # startup's objects, then each full pass's, out of the next passes
        reclaiming.append(asyncio.get_running_loop().create_task(heap.run()))
        if not supervised():  # a cluster prints one banner for all its children
            print(banner_text, flush=True)

    server: Coroutine[Any, Any, None]
    if settings.node.role == "edge":
        check_edge_before_start(settings)
        server = serve_edge(settings, on_ready=_announce(ready, _edge_banner), heap=heap)
    elif settings.node.role == "positions":
        check_shard_before_start(settings)
        server = serve_shard(settings, on_ready=_announce(ready, _shard_banner), heap=heap)
    else:
        check_before_start(settings)
        server = serve(settings, on_ready=_announce(ready, _banner), heap=heap)
    raise_open_file_limit()
    try:
        return run_until_signalled(exit_with_parent(server))
    except (OSError, StorageError, ServerStartError) as exc:
        if started:
            raise  # a failure while serving is a crash, with its traceback
        print(f"marketcast: cannot start: {exc}", file=sys.stderr)
        return 2
    finally:
        heap.stop()


def _announce(ready: Callable[[str], None], text: Callable[[T], str]) -> Callable[[T], None]:
    return lambda server: ready(text(server))


def banner(title: str, url: str, http_url: str, instrument: str, *extra: str) -> str:
    """What a started server prints: where to connect and look, and what to try."""
    return "\n".join(
        (
            title,
            f"  websocket: {url}",
            f"  health:    {http_url}/health",
            f"  dashboard: {http_url}/dashboard  (Prometheus: {http_url}/metrics)",
            *extra,
            f"  try:       marketcast subscribe bbo {instrument} --url {url}",
            f"  or:        python -m websockets {url}",
            '             then send {"op":"subscribe","id":1,"channel":"bbo",'
            f'"instruments":["{instrument}"]}}',
        )
    )


def _banner(server: RunningServer) -> str:
    instruments = server.registry.instruments()
    role = "" if server.role == "all" else f" ({server.role})"
    title = f"marketcast{role} is serving {', '.join(instruments)}"
    extra = []
    if server.bus is not None:
        link = server.bus.link
        extra.append(f"  bus:       {link.shown}  ({link.credentials.describe()})")
    return banner(title, server.url, server.http_url, instruments[0], *extra)


def _edge_banner(server: EdgeServer) -> str:
    title = "marketcast (edge) is serving every instrument of the bus"
    return banner(title, server.url, server.http_url, "<instrument>", f"  bus:       {server.bus}")


def _shard_banner(server: RunningShard) -> str:
    shard = server.shard
    return "\n".join(
        (
            f"marketcast (positions shard {shard.shard} of {shard.shards}) is serving "
            f"{len(server.book)} open positions",
            f"  health:    {server.http_url}/health",
            f"  metrics:   {server.http_url}/metrics  (dashboard: {server.http_url}/dashboard)",
            f"  storage:   {server.storage}",
            f"  bus:       {shard.link.shown}  ({shard.link.credentials.describe()})",
        )
    )
