"""``marketcast archive --before T --out DIR [--config FILE]``: old rows to Parquet.

    marketcast archive --before 2026-11-01T00:00:00Z --out /data/marketcast-archive
    marketcast archive --before 2026-11-01 --out archive/ --config live.toml

Moves BBO rows received before ``T`` and positions closed before ``T`` out of the
configured database into Parquet files under ``DIR`` (partitioned by day and venue; see
``publish.storage.archive``), deleting each file's rows once the file is durable. Safe to
interrupt and to run again. Needs the ``archive`` extra (``pip install
'marketcast[archive]'``). It may run beside the server on the same database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from app.exceptions import ConfigError
from app.settings import Settings, load_settings
from app.storage import storage_backend
from publish.history import parse_time
from publish.storage.archive import ROWS_PER_FILE, ArchiveReport, archive
from publish.storage.backend import ArchivableBackend


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = commands.add_parser("archive", help="move old BBO rows and closed positions to Parquet")
    sub.add_argument("--before", required=True, help="archive what is older (ns or ISO 8601)")
    sub.add_argument("--out", required=True, type=Path, help="the archive directory")
    sub.add_argument("--config", help="the server's TOML config (default: the demo's database)")
    sub.add_argument(
        "--rows-per-file", type=int, default=ROWS_PER_FILE, help=f"default {ROWS_PER_FILE:,}"
    )
    sub.set_defaults(command=_archive)


def _archive(args: argparse.Namespace) -> int:
    settings = load_settings(args.config) if args.config else Settings.demo()
    try:
        before = parse_time(args.before, default=0)
    except ValueError as exc:
        raise ConfigError(f"--before: {exc}") from None
    if before > time.time_ns():
        raise ConfigError("--before is in the future: only the past can be archived")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("archive needs pyarrow: pip install 'marketcast[archive]'") from None
    report = asyncio.run(_run(settings, args.out, before, args.rows_per_file))
    print(
        f"archived {report.bbo_rows:,} BBO rows in {report.bbo_files:,} files and "
        f"{report.positions:,} closed positions in {report.position_files:,} files "
        f"under {args.out}",
        file=sys.stdout,
    )
    return 0


async def _run(settings: Settings, out: Path, before: int, rows_per_file: int) -> ArchiveReport:
    backend = storage_backend(settings.storage)
    if not isinstance(backend, ArchivableBackend):
        raise ConfigError(f"the {backend.name} backend cannot be archived")
    await backend.open()
    try:
        return await archive(backend, out, before_ns=before, rows_per_file=rows_per_file)
    finally:
        await backend.close()
