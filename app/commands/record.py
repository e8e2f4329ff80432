"""``marketcast record --config FILE --out FILE``: record raw venue traffic (JSON lines).

Runs the configured venues' feed handlers (books are kept, so states are reported) and
writes the venues' instrument metadata responses, then every frame received and sent,
every connect and every REST snapshot, exactly as on the wire, in the recording format
``marketcast replay`` reads (which names the venue's symbols by that metadata).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from app.instruments import learn_instruments
from app.loop import run_until_signalled
from app.runtime import build_runners, venue_endpoints
from app.settings import Settings, read_settings
from book.registry import BookRegistry
from feeds.recordings import RecordingWriter

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    record = commands.add_parser("record", help="record raw venue traffic to a file")
    record.add_argument("--config", help="TOML config (its venues are recorded); default: demo")
    record.add_argument("--out", required=True, help="recording file to write (.jsonl)")
    record.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    record.set_defaults(command=_record)


def _record(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    return run_until_signalled(record(settings, args.out, seconds=args.seconds))


async def record(
    settings: Settings,
    out: str,
    *,
    seconds: float | None = None,
    registry: BookRegistry | None = None,
) -> None:
    """Record every configured venue until cancelled (or for ``seconds``); the books kept
    while recording are published to ``registry`` when one is given."""
    registry = registry if registry is not None else BookRegistry()
    with RecordingWriter(out) as writer:
        try:
            async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as group:
                for venue in settings.venues:
                    endpoints = await stack.enter_async_context(venue_endpoints(settings, venue))
                    # the metadata responses go first into the recording: replay names
                    # the venue's symbols by them
                    resolved = await learn_instruments(venue, endpoints, recorder=writer.write)
                    for runner in build_runners(
                        settings, resolved.venue, endpoints, registry, recorder=writer.write
                    ):
                        group.create_task(runner.run())
                await asyncio.sleep(seconds if seconds is not None else float("inf"))
                raise _Done
        except* _Done:
            pass
        finally:
            log.info("recorded %d frames to %s", writer.frames, out)


class _Done(Exception):
    """The recording time is up: end the task group."""
