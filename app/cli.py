"""``marketcast`` command line. ``marketcast run`` with no config runs the offline demo
(simulated venues on loopback, SQLite at ./marketcast.db, server on 127.0.0.1:8765)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from app.commands import record, replay, run, simulate, subscribe, token
from app.exceptions import ConfigError

COMMANDS = (run, simulate, replay, record, subscribe, token)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketcast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
