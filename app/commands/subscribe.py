"""``marketcast subscribe CHANNEL [KEY...]``: a terminal client of the websocket server.

    marketcast subscribe bbo binance:BTC-USDT binance:ETH-USDT
    marketcast subscribe book binance:BTC-USDT --depth 5
    marketcast subscribe nbbo BTC-USDT
    marketcast subscribe status
    marketcast subscribe metrics --count 3
    marketcast subscribe profit acct-1 --token "$(marketcast token --account acct-1)"
    marketcast subscribe bbo binance:BTC-USDT --token "$(marketcast token --account a-1)"

Prints one line per update (a small ladder per ``book`` update), times in UTC from the
message's exchange event time (receive time for messages without one). Exits 1 on an
error reply or a close by the server, 0 after ``--count`` updates or Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.loop import run_until_signalled
from publish.protocol import ACCOUNT_FIELD, KEY_FIELDS, Channel

DEFAULT_URL = "ws://127.0.0.1:8765/ws"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = commands.add_parser("subscribe", help="print a channel's updates in the terminal")
    sub.add_argument("channel", choices=[channel.value for channel in Channel])
    sub.add_argument(
        "keys",
        nargs="*",
        metavar="INSTRUMENT",
        help="instruments (bbo, book), symbols (nbbo) or the account (profit)",
    )
    sub.add_argument("--url", default=DEFAULT_URL, help=f"server websocket URL ({DEFAULT_URL})")
    sub.add_argument("--token", help="auth token (marketcast token --account A)")
    sub.add_argument("--depth", type=int, help="book levels per side")
    sub.add_argument("--count", type=int, help="exit after this many updates")
    sub.set_defaults(command=_subscribe)


def _subscribe(args: argparse.Namespace) -> int:
    channel = Channel(args.channel)
    field = KEY_FIELDS.get(channel)
    if field is not None and not args.keys:
        print(f"marketcast: the {args.channel} channel needs {field}", file=sys.stderr)
        return 2
    if channel is Channel.PROFIT and len(args.keys) != 1:
        print("marketcast: the profit channel needs one account", file=sys.stderr)
        return 2
    status = 0

    async def client() -> None:
        nonlocal status
        status = await subscribe(
            args.url,
            Channel(args.channel),
            args.keys,
            token=args.token,
            depth=args.depth,
            count=args.count,
        )

    run_until_signalled(client())
    return status


async def subscribe(
    url: str,
    channel: Channel,
    keys: list[str],
    *,
    token: str | None = None,
    depth: int | None = None,
    count: int | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    clock: Callable[[], int] = time.time_ns,
) -> int:
    """Subscribe and print updates to ``out`` until ``count`` (or forever); the exit
    status: 0 done, 1 refused or closed by the server. ``clock`` (ns) times messages
    that carry no time of their own (``status``)."""
    request: dict[str, object] = {"op": "subscribe", "id": 2, "channel": channel.value}
    field = KEY_FIELDS.get(channel)
    if field is not None:
        request[field] = keys
    elif channel is Channel.PROFIT:
        request[ACCOUNT_FIELD] = keys[0]
    if depth is not None:
        request["depth"] = depth
    try:
        async with connect(url) as ws:
            if token is not None:
                await ws.send(orjson.dumps({"op": "auth", "id": 1, "token": token}).decode())
            await ws.send(orjson.dumps(request).decode())
            status = await _print_updates(ws, count, out, err, clock)
            if status is not None:
                return status
            close = ws.close_code, ws.close_reason
    except OSError as exc:
        print(f"marketcast: cannot connect to {url}: {exc.strerror or exc}", file=err)
        return 1
    except ConnectionClosed as exc:
        close = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, None)
    code, reason = close
    why = "connection lost" if code is None else f"{code} {reason or ''}".strip()
    print(f"marketcast: the server closed the connection: {why}", file=err)
    return 1


async def _print_updates(
    ws: ClientConnection, count: int | None, out: TextIO, err: TextIO, clock: Callable[[], int]
) -> int | None:
    """Print until ``count`` (0), an error reply (1) or the end of the connection (None)."""
    printed = 0
    async for frame in ws:
        decoded = orjson.loads(frame)
        for message in decoded if isinstance(decoded, list) else (decoded,):
            kind = message.get("type")
            if kind == "error":
                print(f"marketcast: {message['code']}: {message['message']}", file=err)
                return 1
            if kind == "ack":
                print(f"marketcast: {_ack_text(message)}", file=err)
                continue
            print(render(message, clock()), file=out, flush=True)
            printed += 1
            if count is not None and printed >= count:
                return 0
    return None


def _ack_text(ack: Mapping[str, Any]) -> str:
    if ack.get("op") == "auth":
        return f"authenticated as {ack['account']}"
    keys = ack.get("instruments") or ack.get("symbols") or []
    depth = f" depth {ack['depth']}" if "depth" in ack else ""
    return f"{ack['op']}d to {ack['channel']}{depth} {' '.join(keys)}".rstrip()


def render(message: Mapping[str, Any], received: int) -> str:
    """One server message as terminal text (a few lines for a ``book``), timed by its
    exchange event time, else its send time, else ``received`` (ns)."""
    kind = message.get("type")
    when = _clock(message.get("ts_event") or message.get("ts_send") or received)
    if kind == "bbo":
        return (
            f"{when}  {message['instrument']:<24} #{message['seq']:<8} "
            f"{_side(message['bid'], message['bid_qty'])}  |  "
            f"{_side(message['ask'], message['ask_qty'])}"
        )
    if kind == "nbbo":
        return (
            f"{when}  {message['symbol']:<24} #{message['seq']:<8} "
            f"{_side(message['bid'], message['bid_qty'], message['bid_venue'])}  |  "
            f"{_side(message['ask'], message['ask_qty'], message['ask_venue'])}"
        )
    if kind == "book":
        return _ladder(when, message)
    if kind == "status":
        return f"{when}  {message['instrument']:<24} {message['state']} ({message['reason']})"
    if kind == "profit":
        return (
            f"{when}  {message['account']} {message['position_id']:<12} "
            f"{message['instrument']:<24} {message['side']} {message['qty']} @ "
            f"{message['entry']}  mark {message['mark'] or '-'}  pnl {message['pnl'] or '-'}"
        )
    if kind == "profit_total":
        return (
            f"{when}  {message['account']} total pnl {message['pnl']} over "
            f"{message['positions']} positions ({message['unmarked']} unmarked)"
        )
    if kind == "profit_closed":
        return (
            f"{when}  {message['account']} {message['position_id']:<12} "
            f"{message['instrument']:<24} closed"
        )
    if kind == "metrics":
        fields = (
            f"{name}={_compact(value)}"
            for name, value in message.items()
            if name not in ("type", "ts_send")
        )
        return f"{when}  metrics  {' '.join(fields)}"
    return f"{when}  {orjson.dumps(message).decode()}"


def _ladder(when: str, book: Mapping[str, Any]) -> str:
    """Bids left, asks right, best on top: ``qty  price | price  qty``."""
    bids, asks = book["bids"], book["asks"]
    rows = [f"{when}  {book['instrument']:<24} #{book['seq']:<8} book depth {book['depth']}"]
    width = max((len(price) for price, _ in bids), default=0)
    qty_width = max((len(qty) for _, qty in bids), default=0)
    for index in range(max(len(bids), len(asks))):
        bid = bids[index] if index < len(bids) else ("", "")
        ask = asks[index] if index < len(asks) else ("", "")
        left = f"{bid[1]:>{qty_width}}  {bid[0]:>{width}}"
        rows.append(f"    {left} | {ask[0]}  {ask[1]}".rstrip())
    return "\n".join(rows)


def _side(price: str | None, qty: str | None, venue: str | None = None) -> str:
    if price is None:
        return "-"
    where = f" ({venue})" if venue else ""
    return f"{price} x {qty}{where}"


def _clock(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S.%f")


def _compact(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
