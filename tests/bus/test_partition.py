"""A partitioned edge, as on a second machine: the edge runs in a network namespace of its
own, reaching nats-server over one veth link and its clients over another. Cutting the
bus link (``ip link set ... down``) turns the edge's books ``stale`` with a reason while
its clients stay connected; putting the link back up makes them ``live`` again by
themselves, and no seq ever goes back on the client's connection.

Needs root and iproute2 (the namespace and links are made and removed by the test)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from bus.natsserver import NatsServer, free_port
from tests.bus.nodes import PREFIX, SECRET, ingest_node, ingest_settings
from tests.waiting import eventually, within

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="network namespaces need root and iproute2's ip",
    ),
]

BTC = "binance:BTC-USDT"
REPO = Path(__file__).resolve().parents[2]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class EdgeHost:
    """A namespace standing for the edge's machine, with a bus link and a client link.

    Each link is a veth pair with a /30 of its own: the root namespace's end (``*_near``)
    and the edge's end. Cutting a link means setting its root-side end down."""

    namespace: str
    bus_link: str
    client_link: str
    bus_address_near: str
    edge_client_address: str


@contextlib.contextmanager
def edge_host() -> Iterator[EdgeHost]:
    tag = secrets.token_hex(3)
    octet = 16 + int(tag[:2], 16) % 200  # a third octet of our own: parallel runs differ
    host = EdgeHost(
        namespace=f"mc-edge-{tag}",
        bus_link=f"mcb{tag}",
        client_link=f"mcc{tag}",
        bus_address_near=f"10.201.{octet}.1",
        edge_client_address=f"10.202.{octet}.2",
    )
    ip("netns", "add", host.namespace)
    try:
        for link, subnet in ((host.bus_link, "201"), (host.client_link, "202")):
            far = f"{link}p"
            ip("link", "add", link, "type", "veth", "peer", "name", far)
            ip("link", "set", far, "netns", host.namespace)
            ip("addr", "add", f"10.{subnet}.{octet}.1/30", "dev", link)
            ip("link", "set", link, "up")
            ip("-n", host.namespace, "addr", "add", f"10.{subnet}.{octet}.2/30", "dev", far)
            ip("-n", host.namespace, "link", "set", far, "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        yield host
    finally:
        # Deleting the namespace deletes its veth ends, and with them their peers.
        for link in (host.bus_link, host.client_link):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "del", link)
        ip("netns", "del", host.namespace)


EDGE_CONFIG = """
[node]
role = "edge"
[server]
host = "0.0.0.0"
port = {port}
[auth]
secret = "{secret}"
[bus]
url = "{bus}"
prefix = "{prefix}"
stale_after_ms = 1000
"""


@contextlib.asynccontextmanager
async def edge_process(host: EdgeHost, bus_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """``marketcast run`` as an edge inside the namespace; yields its websocket URL as
    seen from the root namespace (over the client link)."""
    port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(EDGE_CONFIG.format(port=port, secret=SECRET, bus=bus_url, prefix=PREFIX))
    process = await asyncio.create_subprocess_exec(
        *("ip", "netns", "exec", host.namespace),
        *(sys.executable, "-m", "app.cli", "run", "--config", str(config)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        yield f"ws://{host.edge_client_address}:{port}/ws"
    finally:
        if process.returncode is None:
            process.kill()
        await within(process.wait(), "the edge's exit")


class Subscriber:
    """bbo and status of BTC on one connection, as a client of the edge sees them."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.statuses: list[dict[str, Any]] = []
        self.closed = False

    async def read(self, url: str) -> None:
        # An edge accepts connections before it has learned the instruments from the bus
        # (a bbo subscription then gets unknown_instrument), so bbo is subscribed once
        # BTC's first status says the edge knows it, as a client would.
        async with connect(url) as ws:
            await ws.send(
                orjson.dumps(
                    {"op": "subscribe", "id": 1, "channel": "status", "instruments": [BTC]}
                ).decode()
            )
            async for raw in ws:
                message: dict[str, Any] = orjson.loads(raw)
                if message["type"] == "bbo":
                    self.seqs.append(message["seq"])
                elif message["type"] == "status" and message["instrument"] == BTC:
                    if not self.statuses:
                        await ws.send(
                            orjson.dumps(
                                {"op": "subscribe", "id": 2, "channel": "bbo", "instruments": [BTC]}
                            ).decode()
                        )
                    self.statuses.append(message)
                elif message["type"] == "error":
                    raise AssertionError(f"refused: {message}")
        self.closed = True

    def state(self) -> str:
        return self.statuses[-1]["state"] if self.statuses else ""


async def connected(url: str, subscriber: Subscriber) -> asyncio.Task[None]:
    """Start reading once the edge in the namespace accepts connections."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            async with connect(url):
                break
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
    return asyncio.create_task(subscriber.read(url))


async def test_a_partitioned_edge_goes_stale_keeps_its_clients_and_heals(tmp_path: Path) -> None:
    with edge_host() as host, NatsServer(host="0.0.0.0") as nats:
        bus_from_edge = f"nats://{host.bus_address_near}:{nats.port}"
        async with (
            ingest_node(ingest_settings(tmp_path / "ingest.db", f"nats://127.0.0.1:{nats.port}")),
            edge_process(host, bus_from_edge, tmp_path) as url,
        ):
            subscriber = Subscriber()
            reading = await connected(url, subscriber)
            try:
                await eventually(lambda: subscriber.state() == "live", "BTC live at the edge")
                await eventually(lambda: len(subscriber.seqs) >= 5, "bbo through the edge")

                ip("link", "set", host.bus_link, "down")  # the partition
                await eventually(lambda: subscriber.state() == "stale", "BTC stale", limit=10)
                stale = subscriber.statuses[-1]
                assert stale.get("reason"), stale  # subscribers are told why
                seqs_when_cut = len(subscriber.seqs)
                # Long enough for the NATS client to declare the connection dead (two
                # missed pings of 2 s) and start reconnecting through the cut link.
                await asyncio.sleep(7)
                assert not subscriber.closed  # clients stay connected through it
                assert subscriber.state() == "stale"

                ip("link", "set", host.bus_link, "up")  # healed
                await eventually(lambda: subscriber.state() == "live", "BTC live again", limit=60)
                await eventually(
                    lambda: len(subscriber.seqs) >= seqs_when_cut + 5, "bbo flowing again"
                )
            finally:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            assert not subscriber.closed
            assert all(a < b for a, b in zip(subscriber.seqs, subscriber.seqs[1:], strict=False))
