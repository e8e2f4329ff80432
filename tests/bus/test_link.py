"""``BusLink`` over a real nats-server: a stop is never lost, even one that lands where
nats-py swallows it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request

from nats.aio.client import Client

from bus.link import BusLink, close_quietly, raise_swallowed_cancellation
from bus.natsserver import NatsServer, free_port
from tests.waiting import eventually


async def test_a_stop_swallowed_during_connect_hooks_still_stops_the_link(
    nats_server: NatsServer,
) -> None:
    hooked = asyncio.Event()

    async def swallowing_hook(client: Client) -> None:
        # What nats-py's flush does with a CancelledError: catch it and return.
        hooked.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)

    link = BusLink([nats_server.url], name="test-link")
    link.on_connect(swallowing_hook)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(hooked.wait(), 30)
        task.cancel()
        await eventually(task.done, "the link stopped")
        assert task.cancelled()
        assert link.client is not None and link.client.is_closed
    finally:
        task.cancel()


async def test_a_swallowed_cancellation_is_raised_again_and_only_that() -> None:
    async def swallow_then_check() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # what nats-py does
            await asyncio.sleep(30)
        raise_swallowed_cancellation()
        return "went on"

    async def time_out_then_check() -> str:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):  # a cancellation consumed as a timeout
                await asyncio.sleep(30)
        raise_swallowed_cancellation()
        return "went on"

    swallowing = asyncio.create_task(swallow_then_check())
    await asyncio.sleep(0)
    swallowing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await swallowing
    assert swallowing.cancelled()
    assert await time_out_then_check() == "went on"


def connections(monitor_port: int) -> int:
    """The client connections the nats-server itself counts (its monitoring page)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/connz", timeout=5) as page:
        return int(json.load(page)["num_connections"])


async def test_a_close_cut_short_leaves_no_socket_open() -> None:
    monitor_port = free_port()
    with NatsServer(extra_args=["-m", str(monitor_port)]) as server:
        client = Client()
        await client.connect(servers=[server.url], allow_reconnect=False)
        assert connections(monitor_port) == 1
        # nats-py marks the client closed, then yields before it closes the socket: a
        # cancellation (or a reset) there leaves the socket open.
        closing = asyncio.create_task(client.close())
        await asyncio.sleep(0)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        assert client.is_closed
        await asyncio.sleep(0.2)
        assert connections(monitor_port) == 1, "the cut-short close did close the socket"
        await close_quietly(client)
        await eventually(lambda: connections(monitor_port) == 0, "the server saw it close")
