"""Per-connection limits over loopback: ops per second, the error budget (4029), floods,
and a client that stops reading while others keep receiving, in bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from book.status import InstrumentState
from publish.client import ServerLimits
from tests.publish.support import (
    BTC,
    ETH,
    KRAKEN_BTC,
    ack,
    bbo,
    error,
    receive,
    running,
    send,
    wait_until,
)

NEVER = 1e-9
"""A refill rate so low that no token comes back during a test: budgets are exact."""
ASK = ("43000.2", "1.25")


async def test_requests_past_the_ops_budget_are_refused_rate_limited() -> None:
    limits = ServerLimits(ops_per_second=NEVER, ops_burst=3)
    async with running(limits) as m, connect(m.server.url) as ws:
        for request_id in range(6):
            await send(ws, op="ping", id=request_id)
        replies = [await receive(ws) for _ in range(6)]
        assert (
            replies
            == [{"type": "pong", "id": n} for n in range(3)]
            + [error(None, "rate_limited", "more than 1e-09 requests per second")] * 3
        )
        assert (m.fanout.counters.rate_limited, m.fanout.counters.errors_sent) == (3, 3)


async def test_a_client_past_its_error_budget_is_closed_4029_and_leaves_everything() -> None:
    limits = ServerLimits(errors_per_second=NEVER, error_burst=3)
    async with running(limits) as m, connect(m.server.url) as ws:
        await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC, ETH])
        await send(ws, op="subscribe", id=2, channel="status")
        assert [await receive(ws) for _ in range(2)][0] == ack(1, "bbo", BTC, ETH)
        for request_id in range(5):
            await send(ws, op="fly", id=request_id)
        received: list[Any] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(await receive(ws))
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4029, "too many errors")
        errors = [message for message in received if message["type"] == "error"]
        assert errors == [error(n, "unknown_op", "unknown op 'fly'") for n in range(3)]
        await wait_until(lambda: m.fanout.counters.clients == 0, what="session ended")
        assert m.fanout.counters.error_closes == 1
        assert m.fanout.subscriptions() == 0


async def test_a_flood_without_reading_gets_its_budgets_then_a_4029_close() -> None:
    """The client writes a thousand requests and reads nothing until it has sent them all:
    the server answers within its budgets, never buffers more than its reply limit, and
    closes the connection once the error budget is spent."""
    limits = ServerLimits(
        ops_per_second=NEVER, ops_burst=20, errors_per_second=NEVER, error_burst=10
    )
    async with running(limits) as m, connect(m.server.url) as ws:
        with contextlib.suppress(ConnectionClosed):  # the close may land while sending
            for request_id in range(1000):
                await send(ws, op="ping", id=request_id)
        received: list[Any] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(await receive(ws))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
        assert (
            received
            == [{"type": "pong", "id": n} for n in range(20)]
            + [error(None, "rate_limited", "more than 1e-09 requests per second")] * 10
        )
        await wait_until(lambda: m.fanout.counters.clients == 0, what="session ended")


def traced() -> int:
    """Bytes allocated now, leaving out book.fixed's bounded memo of decimal texts (it
    fills with the test's ever-new prices up to its own limit, whatever the server does)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, "*/book/fixed.py"), tracemalloc.Filter(False, "<unknown>")]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def small_window_socket(port: int) -> socket.socket:
    """A connected client socket with a tiny receive buffer, so a client that stops
    reading backs the server up after a few kilobytes rather than megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def test_a_stalled_client_costs_bounded_memory_while_the_other_gets_every_update() -> None:
    limits = ServerLimits(write_limit=1024, send_buffer_bytes=4096, slow_consumer_seconds=600)
    instruments = (BTC, ETH, KRAKEN_BTC)
    async with running(limits) as m:
        sock = await small_window_socket(m.server.port)
        async with (
            connect(m.server.url, sock=sock, max_queue=1) as stalled,
            connect(m.server.url) as steady,
        ):
            for ws in (stalled, steady):
                await send(ws, op="subscribe", id=1, channel="bbo", instruments=list(instruments))
                assert await receive(ws) == ack(1, "bbo", *instruments)
            for instrument in instruments:
                m.feed.status(instrument, InstrumentState.LIVE)

            seqs = dict.fromkeys(instruments, 0)

            async def publish_round(bid: int) -> None:
                """One change per instrument in one tick; the steady client gets all three."""
                expected = []
                for instrument in instruments:
                    snapshot = m.feed.quote(instrument, (str(bid), "1"), ASK)
                    seqs[instrument] = snapshot.seq
                    expected.append(bbo(instrument, snapshot.seq, (str(bid), "1"), ASK))
                assert [await receive(steady) for _ in instruments] == expected

            bid = 1000
            while m.fanout.counters.conflated < 30:  # until the stalled one is well behind
                bid += 1
                await publish_round(bid)
                assert bid < 20_000, "the stalled client never backed up"
            conflated = m.fanout.counters.conflated
            tracemalloc.start()
            try:
                await publish_round(bid := bid + 1)
                before = traced()
                for _ in range(1_000):
                    await publish_round(bid := bid + 1)
                grown = traced() - before
            finally:
                tracemalloc.stop()
            # 3,000 updates went by: a queue would hold ~600 kB of them; conflation holds 3.
            assert grown < 64 * 1024, f"{grown} bytes more after 3,000 updates"
            assert m.fanout.counters.conflated - conflated > 2_900  # ~all of them replaced
            # Resuming, the stalled client reads conflated latest state: seq only grows per
            # instrument and ends at the current version.
            latest: dict[str, Any] = {}
            while any(
                latest.get(instrument, {}).get("seq") != seqs[instrument]
                for instrument in instruments
            ):
                message = await receive(stalled)
                previous = latest.get(message["instrument"], {"seq": 0})
                assert message["seq"] > previous["seq"]
                latest[message["instrument"]] = message
            assert latest == {
                instrument: bbo(instrument, seqs[instrument], (str(bid), "1"), ASK)
                for instrument in instruments
            }
        await wait_until(lambda: m.fanout.counters.clients == 0, what="sessions ended")
        assert m.fanout.subscriptions() == 0
