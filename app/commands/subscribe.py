"""``marketcast subscribe CHANNEL [KEY...]``: a terminal client of the websocket server.

    marketcast subscribe bbo binance:BTC-USDT binance:ETH-USDT
    marketcast subscribe book binance:BTC-USDT --depth 5
    marketcast subscribe nbbo BTC-USDT
    marketcast subscribe status
    marketcast subscribe metrics --count 3
    marketcast subscribe profit acct-1 --token "$(marketcast token --account acct-1)"
    marketcast subscribe bbo binance:BTC-USDT --token "$(marketcast token --account a-1)"

Built on the ``marketcast`` client: it reconnects by itself when the connection drops
(saying so on stderr) and resubscribes. Prints one line per update (a small ladder per
``book`` update), times in UTC from the message's exchange event time (its send time,
or the receive time for messages without one). Exits 1 when the server refuses the
subscription or cannot be reached at start, 0 after ``--count`` updates or Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TextIO

import orjson

import marketcast
from app.loop import run_until_signalled
from publish.protocol import KEY_FIELDS, Channel

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
    status: 0 done, 1 refused or unreachable. ``clock`` (ns) times messages that carry
    no time of their own (``status``)."""
    field = KEY_FIELDS.get(channel)
    try:
        async with marketcast.connect(url, token=token) as client:
            if client.account is not None:
                print(f"marketcast: authenticated as {client.account}", file=err)
            await client.subscribe(
                channel.value,
                instruments=keys if field == "instruments" else None,
                symbols=keys if field == "symbols" else None,
                account=keys[0] if channel is Channel.PROFIT else None,
                depth=depth,
            )
            print(f"marketcast: {_subscribed_text(channel, keys, depth)}", file=err)
            await _print_updates(client, count, out, err, clock)
    except marketcast.ServerError as exc:
        print(f"marketcast: {exc.code}: {exc.message}", file=err)
        return 1
    except OSError as exc:
        print(f"marketcast: cannot connect to {url}: {exc.strerror or exc}", file=err)
        return 1
    return 0


async def _print_updates(
    client: marketcast.Client,
    count: int | None,
    out: TextIO,
    err: TextIO,
    clock: Callable[[], int],
) -> None:
    """Print until ``count`` updates (forever without); connection news go to ``err``."""
    printed = 0
    async for message in client:
        if isinstance(message, marketcast.Disconnected):
            print(f"marketcast: disconnected ({message.reason}), reconnecting", file=err)
            continue
        if isinstance(message, marketcast.Reconnected):
            print(f"marketcast: reconnected to {message.url}, resubscribed", file=err)
            continue
        print(render(message, clock()), file=out, flush=True)
        printed += 1
        if count is not None and printed >= count:
            return


def _subscribed_text(channel: Channel, keys: list[str], depth: int | None) -> str:
    shown = f" depth {depth}" if depth is not None else ""
    return f"subscribed to {channel.value}{shown} {' '.join(keys)}".rstrip()


def render(message: marketcast.Message, received: int) -> str:
    """One server message as terminal text (a few lines for a ``book``), timed by its
    exchange event time, else its send time, else ``received`` (ns)."""
    match message:
        case marketcast.Bbo():
            return (
                f"{_clock(message.ts_event or message.ts_send)}  {message.instrument:<24} "
                f"#{message.seq:<8} {_side(message.bid, message.bid_qty)}  |  "
                f"{_side(message.ask, message.ask_qty)}"
            )
        case marketcast.Nbbo():
            return (
                f"{_clock(message.ts_event or message.ts_send)}  {message.symbol:<24} "
                f"#{message.seq:<8} {_side(message.bid, message.bid_qty, message.bid_venue)}"
                f"  |  {_side(message.ask, message.ask_qty, message.ask_venue)}"
            )
        case marketcast.Book():
            return _ladder(_clock(message.ts_event or message.ts_send), message)
        case marketcast.Status():
            return (
                f"{_clock(received)}  {message.instrument:<24} {message.state} ({message.reason})"
            )
        case marketcast.Profit():
            return (
                f"{_clock(message.ts_send)}  {message.account} {message.position_id:<12} "
                f"{message.instrument:<24} {message.side} {_text(message.qty)} @ "
                f"{_text(message.entry)}  mark {_text(message.mark)}  pnl {_text(message.pnl)}"
            )
        case marketcast.ProfitTotal():
            return (
                f"{_clock(message.ts_send)}  {message.account} total pnl {_text(message.pnl)} "
                f"over {message.positions} positions ({message.unmarked} unmarked)"
            )
        case marketcast.ProfitClosed():
            return (
                f"{_clock(message.ts_send)}  {message.account} {message.position_id:<12} "
                f"{message.instrument:<24} closed"
            )
        case marketcast.Metrics():
            fields = (f"{name}={_compact(value)}" for name, value in message.values.items())
            return f"{_clock(message.ts_send)}  metrics  {' '.join(fields)}"
        case marketcast.UnknownMessage():
            return f"{_clock(received)}  {orjson.dumps(dict(message.fields)).decode()}"
    return f"{_clock(received)}  {message!r}"


def _ladder(when: str, book: marketcast.Book) -> str:
    """Bids left, asks right, best on top: ``qty  price | price  qty``."""
    bids = [(_text(price), _text(qty)) for price, qty in book.bids]
    asks = [(_text(price), _text(qty)) for price, qty in book.asks]
    rows = [f"{when}  {book.instrument:<24} #{book.seq:<8} book depth {book.depth}"]
    width = max((len(price) for price, _ in bids), default=0)
    qty_width = max((len(qty) for _, qty in bids), default=0)
    for index in range(max(len(bids), len(asks))):
        bid = bids[index] if index < len(bids) else ("", "")
        ask = asks[index] if index < len(asks) else ("", "")
        left = f"{bid[1]:>{qty_width}}  {bid[0]:>{width}}"
        rows.append(f"    {left} | {ask[0]}  {ask[1]}".rstrip())
    return "\n".join(rows)


def _text(value: Decimal | None) -> str:
    """An amount as the server wrote it (``str`` would print ``1E-8``)."""
    return "-" if value is None else format(value, "f")


def _side(price: Decimal | None, qty: Decimal | None, venue: str | None = None) -> str:
    if price is None:
        return "-"
    where = f" ({venue})" if venue else ""
    return f"{_text(price)} x {_text(qty)}{where}"


def _clock(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S.%f")


def _compact(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
