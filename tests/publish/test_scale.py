"""A thousand concurrent subscribers on one server, all receiving correct updates."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from book.status import InstrumentState
from tests.publish.support import BTC, ETH, KRAKEN_BTC, ack, bbo, receive, running, send, wait_until

CLIENTS = 1_000
UPDATES = 30
INSTRUMENTS = (BTC, ETH, KRAKEN_BTC)
ASK = ("50000", "2")


def quote(step: int) -> tuple[str, str]:
    return (f"{49_000 + step}.5", str(step + 1))


def wanted(index: int) -> list[str]:
    """Client ``index`` subscribes to one instrument, every fifth to two: topics have
    crowds of different sizes."""
    first = INSTRUMENTS[index % 3]
    return [first, INSTRUMENTS[(index + 1) % 3]] if index % 5 == 0 else [first]


async def test_a_thousand_subscribers_all_receive_every_instrument_up_to_its_last_version() -> None:
    async with running() as m:
        expected: dict[tuple[str, int], object] = {}
        for instrument in INSTRUMENTS:
            m.feed.status(instrument, InstrumentState.LIVE)
            seq = m.feed.quote(instrument, quote(0), ASK).seq
            expected[instrument, seq] = bbo(instrument, seq, quote(0), ASK)
        async with contextlib.AsyncExitStack() as stack:

            async def subscriber(index: int) -> tuple[ClientConnection, bool]:
                batch = index % 2 == 1  # half of them batched
                url = m.server.url + ("?batch=1" if batch else "")
                ws = await stack.enter_async_context(connect(url))
                await send(ws, op="subscribe", id=index, channel="bbo", instruments=wanted(index))
                return ws, batch

            clients = await asyncio.gather(*(subscriber(i) for i in range(CLIENTS)))
            total = sum(len(wanted(index)) for index in range(CLIENTS))
            await wait_until(lambda: m.fanout.subscriptions() == total, what="all subscribed")
            assert m.fanout.crowds() == 6  # three single instruments, three pairs
            last: dict[str, int] = {}
            for step in range(1, UPDATES + 1):
                for instrument in INSTRUMENTS[: 1 + step % 3]:
                    last[instrument] = seq = m.feed.quote(instrument, quote(step), ASK).seq
                    expected[instrument, seq] = bbo(instrument, seq, quote(step), ASK)
                await asyncio.sleep(0)

            async def drain(index: int, ws: ClientConnection, batch: bool) -> list[Any]:
                """Everything received until the last version of each subscribed instrument."""
                pending = set(wanted(index))
                received = []
                while pending:
                    frame = await receive(ws)
                    for message in frame if batch else [frame]:
                        received.append(message)
                        if (
                            message["type"] == "bbo"
                            and message["seq"] == last[message["instrument"]]
                        ):
                            pending.discard(message["instrument"])
                return received

            results = await asyncio.gather(
                *(drain(index, ws, batch) for index, (ws, batch) in enumerate(clients))
            )
        await wait_until(lambda: m.fanout.counters.clients == 0, what="sessions ended")
        assert m.fanout.subscriptions() == 0
    for index, received in enumerate(results):
        assert received[0] == ack(index, "bbo", *wanted(index))
        updates = received[1:]
        assert {message["instrument"] for message in updates} == set(wanted(index))
        for instrument in wanted(index):
            seqs = [message["seq"] for message in updates if message["instrument"] == instrument]
            assert seqs == sorted(set(seqs)) and seqs[-1] == last[instrument]
        assert updates == [expected[message["instrument"], message["seq"]] for message in updates]
