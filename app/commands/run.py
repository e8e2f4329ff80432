"""``marketcast run [--config FILE]``: the server (no config: the offline demo)."""

from __future__ import annotations

import argparse

from app.loop import run_until_signalled
from app.runtime import RunningServer, serve
from app.settings import Settings, load_settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run the server (no --config: the offline demo)")
    run.add_argument("--config", help="TOML config file (see config/live.example.toml)")
    run.add_argument("--port", type=int, help="override [server].port")
    run.add_argument("--db", help="override [storage].path")
    run.set_defaults(command=_run)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config) if args.config else Settings.demo()
    if args.port is not None:
        settings = settings.with_port(args.port)
    if args.db is not None:
        settings = settings.with_storage_path(args.db)
    return run_until_signalled(serve(settings, on_ready=_print_banner))


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
