"""A PostgreSQL outage under the whole server: the database is cut off, then hangs, behind a
TCP proxy on loopback (the shared PostgreSQL itself is never touched). Market data keeps
streaming, position ops are refused with ``storage_unavailable``, the server recovers on
its own, and nothing acknowledged is lost: every acked position and every BBO change a
subscriber saw during the outages is in the database afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.runtime import RunningServer
from app.settings import (
    AuthSettings,
    PositionSettings,
    ServerSettings,
    Settings,
    SimulatorSettings,
    StorageSettings,
    VenueSettings,
    native_symbols,
)
from book.fixed import from_decimal, parse_fixed
from publish.auth import TokenAuthority
from publish.storage import StorageHealth
from tests.app.serving import running
from tests.postgres import PG_ADDRESS, dsn_via, fresh_schema, pg_query
from tests.tcpproxy import TcpProxy
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(150)

SECRET = "outage-test-secret-0123456789"
BTC = "binance:BTC-USDT"


class Client:
    """A websocket client that sorts what it receives: bbo frames, replies by id."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.bbo: list[dict[str, Any]] = []
        self.replies: dict[object, dict[str, Any]] = {}
        self._reader = asyncio.create_task(self._read())

    async def request(self, **request: object) -> dict[str, Any]:
        await self.ws.send(orjson.dumps(request).decode())
        await eventually(
            lambda: request["id"] in self.replies, f"reply to {request['id']}", limit=30
        )
        return self.replies.pop(request["id"])

    async def more_bbo(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` bbo frames (market data keeps coming)."""
        start = len(self.bbo)
        await eventually(lambda: len(self.bbo) >= start + count, f"{count} more bbo frames")
        return self.bbo[start : start + count]

    async def _read(self) -> None:
        async for raw in self.ws:
            message = orjson.loads(raw)
            if message["type"] == "bbo":
                self.bbo.append(message)
            elif "id" in message:
                self.replies[message["id"]] = message


async def storage_health(server: RunningServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http_url}/health")
    body: dict[str, Any] = response.json()
    return body


def open_request(request_id: str) -> dict[str, Any]:
    return {
        "op": "position.open",
        "id": request_id,
        "position": {
            "id": request_id,
            "instrument": BTC,
            "side": "buy",
            "qty": "0.125",
            "price": "61000.000000000001",
        },
    }


async def test_the_server_rides_out_a_database_outage(tmp_path: Any) -> None:
    async with fresh_schema() as schema, TcpProxy(*PG_ADDRESS) as proxy:
        settings = Settings(
            server=ServerSettings(port=0),
            storage=StorageSettings(
                # Long enough that a healthy write through the in-process proxy never
                # times out on a loaded machine; a hanging database still shows in seconds.
                backend="postgres",
                dsn=dsn_via(proxy.port),
                schema=schema,
                timeout_ms=2_000,
            ),
            simulator=SimulatorSettings(updates_per_second=100.0, seed=5),
            venues=(
                VenueSettings(
                    id="binance", symbols=native_symbols("binance", ("BTC-USDT",)), simulate=True
                ),
            ),
            auth=AuthSettings(secret=SECRET, secret_file=str(tmp_path / "secret")),
            positions=PositionSettings(ack_timeout_ms=5_000),
        )
        async with running(settings) as server, connect(server.url) as ws:
            flusher = server.flusher
            client = Client(ws)
            token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=600)
            assert (await client.request(op="auth", id="auth", token=token))["type"] == "ack"
            await client.request(op="subscribe", id="bbo", channel="bbo", instruments=[BTC])
            await client.more_bbo(1)
            acked = [await client.request(**open_request("p-1"))]

            # 1. The database is down: connections refused.
            proxy.cut()
            await eventually(lambda: flusher.health is StorageHealth.DEGRADED, "degraded")
            during_cut = await client.more_bbo(10)
            refused = await client.request(**open_request("p-2"))
            health_down = await storage_health(server)
            proxy.restore()
            await eventually(lambda: flusher.health is StorageHealth.HEALTHY, "recovered")
            acked.append(await client.request(**open_request("p-2")))

            # 2. The database hangs: connections open, nothing answers.
            proxy.pause()
            during_pause = await client.more_bbo(10)
            unconfirmed = await client.request(**open_request("p-3"))
            await eventually(lambda: flusher.health is StorageHealth.DEGRADED, "degraded")
            proxy.restore()
            await eventually(lambda: flusher.health is StorageHealth.HEALTHY, "recovered")
            acked.append(await client.request(**open_request("p-3")))  # the retry
            await eventually(lambda: flusher.pending_rows == 0, "everything written")
            stats = flusher.stats()
            health_up = await storage_health(server)

        assert refused == {
            "type": "error",
            "id": "p-2",
            "code": "storage_unavailable",
            "message": "storage unavailable: the database is not accepting writes; "
            "nothing was changed",
        }
        # Refused while hanging: by the lookup or the ack timeout, whichever came first.
        assert (unconfirmed["type"], unconfirmed["code"]) == ("error", "storage_unavailable")
        assert [reply["position"]["id"] for reply in acked] == ["p-1", "p-2", "p-3"]
        assert all(reply["type"] == "ack" for reply in acked)
        assert stats.dropped_bbo_rows == 0 and stats.failures > 0
        assert health_down["status"] == "degraded"
        assert health_down["storage"]["backend"] == "postgres"
        assert health_down["storage"]["health"] == "degraded"
        # pending_rows is whatever the feed added since the last flush: not compared.
        assert {**health_up["storage"], "pending_rows": None} == {
            "backend": "postgres",
            "health": "healthy",
            "pending_rows": None,
            "failures": stats.failures,
            "dropped_bbo_rows": 0,
        }

        stored_positions = await pg_query(
            f"SELECT id, account, instrument, side, qty, entry_px, opened_ts, closed_ts"
            f' FROM "{schema}".positions ORDER BY id'
        )
        assert [
            (id_, account, instrument, side, from_decimal(qty), from_decimal(entry), opened, closed)
            for id_, account, instrument, side, qty, entry, opened, closed in stored_positions
        ] == [
            (
                reply["position"]["id"],
                "acct-1",
                BTC,
                "buy",
                parse_fixed("0.125"),
                parse_fixed("61000.000000000001"),
                reply["position"]["opened_ts"],
                None,
            )
            for reply in acked
        ]
        stored_bbo = {
            seq: tuple(None if value is None else from_decimal(value) for value in prices)
            for seq, *prices in await pg_query(
                f'SELECT seq, bid_px, bid_qty, ask_px, ask_qty FROM "{schema}".bbo'
                " WHERE venue = 'binance' AND symbol = 'BTC-USDT'"
            )
        }
        for frame in during_cut + during_pause:
            assert stored_bbo[frame["seq"]] == tuple(
                None if frame[name] is None else parse_fixed(frame[name])
                for name in ("bid", "bid_qty", "ask", "ask_qty")
            )
