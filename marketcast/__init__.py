"""A Python client of the marketcast market-data server.

    import asyncio
    import marketcast

    async def main() -> None:
        async with marketcast.connect("ws://127.0.0.1:8765/ws") as client:
            await client.subscribe("bbo", instruments=["binance:BTC-USDT"])
            async for message in client:
                match message:
                    case marketcast.Bbo(instrument=instrument, bid=bid, ask=ask):
                        print(instrument, bid, ask)
                    case marketcast.Reconnected():
                        print("back, resubscribed")

    asyncio.run(main())

It needs only ``websockets`` and ``orjson`` and never imports the server's packages.
"""

from __future__ import annotations

from marketcast.backoff import Backoff
from marketcast.client import Client, connect
from marketcast.exceptions import (
    ClientClosedError,
    ConnectionLostError,
    MarketcastError,
    ProtocolError,
    ServerError,
)
from marketcast.messages import (
    Bbo,
    Book,
    Disconnected,
    Level,
    Message,
    Metrics,
    Nbbo,
    Position,
    Profit,
    ProfitClosed,
    ProfitTotal,
    Reconnected,
    Status,
    UnknownMessage,
    decode,
)

__all__ = [
    "Backoff",
    "Bbo",
    "Book",
    "Client",
    "ClientClosedError",
    "ConnectionLostError",
    "Disconnected",
    "Level",
    "MarketcastError",
    "Message",
    "Metrics",
    "Nbbo",
    "Position",
    "Profit",
    "ProfitClosed",
    "ProfitTotal",
    "ProtocolError",
    "Reconnected",
    "ServerError",
    "Status",
    "UnknownMessage",
    "connect",
    "decode",
]
