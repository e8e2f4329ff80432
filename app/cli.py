"""``marketcast`` command line: run the server, simulate a venue.

``marketcast run`` with no config runs the offline demo (simulated venues on loopback,
SQLite at ./marketcast.db, server on 127.0.0.1:8765).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from app.exceptions import ConfigError
from app.runtime import RunningServer, serve
from app.settings import Settings, load_settings

log = logging.getLogger("marketcast")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per HTTP request or connection is noise at INFO
        for chatty in ("websockets.server", "websockets.client", "httpx"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return int(args.command(args))
    except ConfigError as exc:
        print(f"marketcast: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketcast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the server (no --config: the offline demo)")
    run.add_argument("--config", help="TOML config file (see config/live.example.toml)")
    run.add_argument("--port", type=int, help="override [server].port")
    run.add_argument("--db", help="override [storage].path")
    run.set_defaults(command=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config) if args.config else Settings.demo()
    if args.port is not None:
        settings = settings.with_port(args.port)
    if args.db is not None:
        settings = settings.with_storage_path(args.db)
    return run_until_signalled(serve(settings, on_ready=_print_banner))


def _print_banner(server: RunningServer) -> None:
    instruments = ", ".join(server.registry.instruments())
    print(
        f"marketcast is serving {instruments}\n"
        f"  websocket: {server.url}\n"
        f"  health:    {server.http_url}/health\n"
        f"  try:       python -m websockets {server.url}\n"
        '             then send {"op":"subscribe","id":1,"channel":"bbo",'
        f'"instruments":["{server.registry.instruments()[0]}"]}}',
        flush=True,
    )


def run_until_signalled(coro: Coroutine[Any, Any, None]) -> int:
    """Run ``coro`` on uvloop (when installed) until it ends or SIGINT/SIGTERM cancels it."""

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await coro
        except asyncio.CancelledError:
            log.info("shutting down")

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(guarded())
    return 0


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    raise SystemExit(main())
