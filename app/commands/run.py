"""``marketcast run [--config FILE]``: the server (no config: the offline demo).

Before anything starts, ``app.preflight`` checks the port, storage and secret file, and
the open-file limit is raised (``app.fdlimit``): a problem is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from app.fdlimit import raise_open_file_limit
from app.loop import run_until_signalled
from app.preflight import check_before_start
from app.runtime import RunningServer, serve
from app.settings import read_settings
from publish.exceptions import ServerStartError
from publish.storage.exceptions import StorageError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run the server (no --config: the offline demo)")
    run.add_argument("--config", help="TOML config file (see config/live.example.toml)")
    run.add_argument("--port", type=int, help="override [server].port")
    run.add_argument("--db", help="override [storage].path")
    run.set_defaults(command=_run)


def _run(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    if args.port is not None:
        settings = settings.with_port(args.port)
    if args.db is not None:
        settings = settings.with_storage_path(args.db)
    check_before_start(settings)
    raise_open_file_limit()
    started = False

    def ready(server: RunningServer) -> None:
        nonlocal started
        started = True
        _print_banner(server)

    try:
        return run_until_signalled(serve(settings, on_ready=ready))
    except (OSError, StorageError, ServerStartError) as exc:
        if started:
            raise  # a failure while serving is a crash, with its traceback
        print(f"marketcast: cannot start: {exc}", file=sys.stderr)
        return 2


def _print_banner(server: RunningServer) -> None:
    instruments = server.registry.instruments()
    print(
        f"marketcast is serving {', '.join(instruments)}\n"
        f"  websocket: {server.url}\n"
        f"  health:    {server.http_url}/health\n"
        f"  dashboard: {server.http_url}/dashboard  (Prometheus: {server.http_url}/metrics)\n"
        f"  try:       marketcast subscribe bbo {instruments[0]} --url {server.url}\n"
        f"  or:        python -m websockets {server.url}\n"
        '             then send {"op":"subscribe","id":1,"channel":"bbo",'
        f'"instruments":["{instruments[0]}"]}}',
        flush=True,
    )
