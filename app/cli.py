"""``marketcast`` command line. ``marketcast run`` with no config runs the offline demo
(simulated venues on loopback, SQLite at ./marketcast.db, server on 127.0.0.1:8765)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.commands import (
    archive,
    cluster,
    history,
    record,
    replay,
    run,
    simulate,
    subscribe,
    token,
)
from app.exceptions import ConfigError
from app.logs import LOG_FORMATS, configure_logging
from publish.metrics.build import build

COMMANDS = (run, cluster, simulate, replay, record, subscribe, history, archive, token)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, log_format=args.log_format)
    try:
        return int(args.command(args))
    except ConfigError as exc:
        print(f"marketcast: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketcast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or one JSON object per line (time, level, logger, message, fields)",
    )
    current = build()
    parser.add_argument(
        "--version", action="version", version=f"marketcast {current.version} ({current.commit})"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
