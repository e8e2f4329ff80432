"""The edge side of the bus: NATS in, a local ``FeedSink`` (the edge's registry) out.

``BusEdge`` subscribes once to ``<prefix>.>`` (so each source's messages arrive in the
order it sent them), says hello (every ingest answers with a heartbeat at once, so a
late edge learns every instrument within a round trip), and drives a
``bus.follower.Follower`` with the messages, a 10 Hz watchdog tick, and the replies to
the state requests the follower asks for (sent in batches of ``REQUEST_BATCH``
instruments, each request its own task so the subscription never waits for a reply).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from book.sink import FeedSink
from bus.codec import StateReply, decode, encode_hello, encode_request
from bus.exceptions import DecodeError
from bus.follower import Follower
from bus.link import BusLink
from bus.subjects import Subjects

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1
REQUEST_BATCH = 64
"""Instruments per state request: a reply stays far below NATS's 1 MB payload limit."""
REQUEST_TIMEOUT = 0.5
PENDING_MESSAGES = 1_000_000
"""Messages the subscription may hold before NATS drops (counted as gaps, repaired)."""


class BusEdge:
    """Run ``run()`` in the node's task group; ``follower`` has the state and counters."""

    def __init__(
        self,
        sink: FeedSink,
        link: BusLink,
        subjects: Subjects,
        *,
        stale_after: float,
        on_hop: Callable[[int], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.subjects = subjects
        self.monotonic = monotonic
        self.follower = Follower(sink, stale_after=stale_after, on_hop=on_hop)
        self.request_failures = 0
        self._group: asyncio.TaskGroup | None = None
        link.on_connect(self._subscribe)
        link.on_reconnect(self._reconnected)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                while True:
                    await asyncio.sleep(TICK_SECONDS)
                    self.follower.tick(self.monotonic())
                    self._send_requests()
            finally:
                self._group = None

    async def _subscribe(self, client: Client) -> None:
        await client.subscribe(
            self.subjects.everything,
            cb=self._on_message,
            pending_msgs_limit=PENDING_MESSAGES,
            pending_bytes_limit=-1,
        )
        await client.publish(self.subjects.hello, encode_hello())

    async def _reconnected(self, client: Client) -> None:
        self.follower.reconnected(self.monotonic())
        await client.publish(self.subjects.hello, encode_hello())
        self._send_requests()

    async def _on_message(self, msg: Msg) -> None:
        self.follower.receive(msg.data, self.monotonic())
        self._send_requests()

    def _send_requests(self) -> None:
        group = self._group
        if group is None:
            return
        for source, names in self.follower.take_requests(self.monotonic()).items():
            for start in range(0, len(names), REQUEST_BATCH):
                chunk = tuple(names[start : start + REQUEST_BATCH])
                group.create_task(self._request(source, chunk), name="bus:state-request")

    async def _request(self, source: int, names: tuple[str, ...]) -> None:
        client = self.link.client
        if client is None or not client.is_connected:
            return  # asked again after REQUEST_RETRY
        try:
            msg = await client.request(
                self.subjects.state(source), encode_request(names), timeout=REQUEST_TIMEOUT
            )
            reply = decode(msg.data)
            if not isinstance(reply, StateReply):
                raise DecodeError(f"expected a state reply, got {type(reply).__name__}")
        except (nats.errors.Error, OSError, TimeoutError, DecodeError) as exc:
            self.request_failures += 1
            log.debug("state request to %016x failed: %s", source, exc)
            return
        self.follower.state_reply(reply, self.monotonic())
