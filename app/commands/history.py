"""``marketcast history INSTRUMENT [--from T] [--to T] [--limit N]``: stored BBO changes.

    marketcast history binance:BTC-USDT --from 2026-12-03T07:00:00Z --to 2026-12-03T08:00:00Z
    marketcast history binance:BTC-USDT --from 1795300703594000000 --limit 10 | jq .bid

Prints what ``GET /v1/history/bbo/<instrument>`` of a running server returns: one ``bbo``
object per line (NDJSON), oldest first, as it streams in. ``T`` is nanoseconds since the
epoch or ISO 8601 (UTC unless it says otherwise). Exits 1 when the server refuses (the
error on stderr), cannot be reached, or the stream breaks off.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO, TextIO
from urllib.parse import quote

import httpx
import orjson

from app.loop import run_until_signalled

DEFAULT_URL = "http://127.0.0.1:8765"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = commands.add_parser("history", help="print an instrument's stored BBO changes")
    sub.add_argument("instrument", help="e.g. binance:BTC-USDT")
    sub.add_argument("--from", dest="start", help="from this time (ns or ISO 8601), inclusive")
    sub.add_argument("--to", dest="end", help="to this time (ns or ISO 8601), exclusive")
    sub.add_argument("--limit", type=int, help="at most this many changes")
    sub.add_argument(
        "--ts", choices=("ns", "us", "ms", "iso"), help="how timestamps are written (ns)"
    )
    sub.add_argument("--url", default=DEFAULT_URL, help=f"the server's HTTP URL ({DEFAULT_URL})")
    sub.add_argument("--token", help="auth token, if the server requires one for market data")
    sub.set_defaults(command=_history)


def _history(args: argparse.Namespace) -> int:
    status = 0

    async def client() -> None:
        nonlocal status
        status = await history(
            args.url,
            args.instrument,
            start=args.start,
            end=args.end,
            limit=args.limit,
            token=args.token,
            ts=args.ts,
        )

    run_until_signalled(client())
    return status


async def history(
    url: str,
    instrument: str,
    *,
    start: str | None = None,
    end: str | None = None,
    limit: int | None = None,
    token: str | None = None,
    ts: str | None = None,
    out: BinaryIO | None = None,
    err: TextIO = sys.stderr,
) -> int:
    """Stream the history to ``out`` (stdout's bytes); the exit status."""
    sink = out if out is not None else sys.stdout.buffer
    params = {
        name: str(value)
        for name, value in (("from", start), ("to", end), ("limit", limit), ("ts", ts))
        if value is not None
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = f"{url.rstrip('/')}/v1/history/bbo/{quote(instrument, safe=':')}"
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http,
            http.stream("GET", target, params=params, headers=headers) as response,
        ):
            if response.status_code != 200:
                print(f"marketcast: {_refusal(await response.aread())}", file=err)
                return 1
            async for chunk in response.aiter_raw():
                sink.write(chunk)
                sink.flush()
    except httpx.TransportError as exc:
        print(f"marketcast: history from {url} failed: {exc or type(exc).__name__}", file=err)
        return 1
    return 0


def _refusal(body: bytes) -> str:
    try:
        error = orjson.loads(body)
        return f"{error['code']}: {error['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]
