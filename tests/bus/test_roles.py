"""Ingest and edges over a real nats-server, in the test's event loop: an edge's clients
get what the single process's clients get; joins, restarts and failover never move a
seq back; every node says its role and bus state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from app.roles import EdgeServer
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from bus.natsserver import NatsServer
from publish.auth import TokenAuthority
from publish.metrics.recorder import Stage
from tests.app.test_end_to_end import wire_bbo
from tests.bus.nodes import SECRET, edge_node, edge_settings, ingest_node, ingest_settings
from tests.metrics_pages import unlabelled_samples
from tests.waiting import eventually

Key = tuple[str, int]


def all_live(registry: BookRegistry, instruments: list[str]) -> bool:
    return bool(instruments) and all(registry.is_live(name) for name in instruments)


def same_books(edge: BookRegistry, ingest: BookRegistry) -> bool:
    names = ingest.instruments()
    return edge.instruments() == names and all(edge.get(n) == ingest.get(n) for n in names)


@contextlib.asynccontextmanager
async def bbo_client(url: str, instruments: list[str]) -> AsyncIterator[ClientConnection]:
    async with connect(url) as ws:
        request = {"op": "subscribe", "id": 1, "channel": "bbo", "instruments": instruments}
        await ws.send(orjson.dumps(request).decode())
        yield ws


async def collect_bbo(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` bbo messages (a bound on a hang, not a timed assertion)."""
    messages: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):
            while len(messages) < count:
                message = orjson.loads(await ws.recv())
                if message["type"] == "bbo":
                    messages.append(message)
    except TimeoutError:
        raise AssertionError(f"{len(messages)} of {count} bbo messages came") from None
    return messages


def quote(message: dict[str, Any]) -> tuple[Any, ...]:
    fields = ("instrument", "seq", "bid", "bid_qty", "ask", "ask_qty", "ts_event", "ts_recv")
    return tuple(message[name] for name in fields)


def seqs_grow(messages: list[dict[str, Any]]) -> bool:
    last: dict[str, int] = {}
    for message in messages:
        if message["seq"] <= last.get(message["instrument"], -1):
            return False
        last[message["instrument"]] = message["seq"]
    return True


async def test_an_edge_client_sees_what_a_single_process_client_sees(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    published: dict[Key, BookSnapshot] = {}
    async with (
        ingest_node(ingest_settings(tmp_path / "i.db", nats_server.url)) as ingest,
        edge_node(edge_settings(nats_server.url)) as edge,
    ):
        ingest.registry.on_snapshot(lambda s, _: published.__setitem__((s.instrument, s.seq), s))
        names = ingest.registry.instruments()
        await eventually(lambda: all_live(edge.registry, names), "the edge serves every instrument")
        async with bbo_client(ingest.url, names) as direct, bbo_client(edge.url, names) as via_bus:
            edge_messages = await collect_bbo(via_bus, 300)
            direct_messages = await collect_bbo(direct, 300)
        await eventually(lambda: same_books(edge.registry, ingest.registry), "equal books")
    assert seqs_grow(edge_messages) and seqs_grow(direct_messages)
    # Same seq, prices and timestamps as the single process published, for either client.
    for message in edge_messages + direct_messages:
        key = (message["instrument"], message["seq"])
        if key in published:  # (the state sent at subscribe may predate the listener)
            assert quote(message) == quote(wire_bbo(published[key]))
    assert sum((m["instrument"], m["seq"]) in published for m in edge_messages) > 250


async def test_a_late_edge_serves_every_live_instrument(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with ingest_node(ingest_settings(tmp_path / "i.db", nats_server.url)) as ingest:
        names = ingest.registry.instruments()
        await eventually(lambda: all_live(ingest.registry, names), "the ingest is live")
        async with edge_node(edge_settings(nats_server.url)) as edge:
            await eventually(lambda: all_live(edge.registry, names), "the late edge is live")
            counters = edge.edge.follower.counters
            assert counters.repairs >= len(names)  # it asked for the state at once


async def test_ingest_restart_keeps_seq_growing_on_the_edge(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = ingest_settings(tmp_path / "i.db", nats_server.url)
    async with edge_node(edge_settings(nats_server.url)) as edge:
        async with ingest_node(settings) as first:
            names = first.registry.instruments()
            await eventually(lambda: all_live(edge.registry, names), "live from the first ingest")
            async with bbo_client(edge.url, names) as ws:
                before = await collect_bbo(ws, 50)
        # The first ingest stopped (it said bye): the edge's books go stale at once.
        await eventually(lambda: not any(edge.registry.is_live(n) for n in names), "stale")
        status = edge.registry.status(names[0])
        assert status is not None and status.reason == "bus: its ingest stopped"
        async with bbo_client(edge.url, names) as ws, ingest_node(settings):
            after = await collect_bbo(ws, 50)
            await eventually(lambda: all_live(edge.registry, names), "live again")
    last_before = {m["instrument"]: m["seq"] for m in before}
    for message in after:
        assert message["seq"] > last_before.get(message["instrument"], -1)


async def test_every_node_says_its_role_and_bus_state(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        ingest_node(ingest_settings(tmp_path / "i.db", nats_server.url)) as ingest,
        edge_node(edge_settings(nats_server.url)) as edge,
    ):
        names = ingest.registry.instruments()
        await eventually(lambda: all_live(edge.registry, names), "live")
        bus_hop = edge.metrics.recorder.stages[Stage.BUS_HOP]
        await eventually(lambda: bus_hop.count > 0, "a metrics report with bus hops")
        async with httpx.AsyncClient() as http:
            edge_health = (await http.get(f"{edge.http_url}/health")).json()
            ingest_health = (await http.get(f"{ingest.http_url}/health")).json()
            edge_metrics = (await http.get(f"{edge.http_url}/metrics")).text
            ingest_metrics = (await http.get(f"{ingest.http_url}/metrics")).text
            stats = (await http.get(f"{edge.http_url}/stats")).json()
    assert edge_health["node"]["role"] == "edge"
    assert edge_health["node"]["bus"]["connected"] is True
    assert edge_health["node"]["bus"]["sources"] == 1
    assert edge_health["node"]["bus"]["last_message_age_ms"] is not None
    assert ingest_health["node"]["role"] == "ingest"
    assert ingest_health["node"]["bus"]["connected"] is True
    assert ingest_health["node"]["bus"]["dropped"] == 0
    assert 'role="edge"' in edge_metrics.split("marketcast_build_info{")[1].split("}")[0]
    assert "marketcast_bus_repairs_total" in edge_metrics
    assert "marketcast_bus_hop_seconds_count" in edge_metrics
    assert 'role="ingest"' in ingest_metrics.split("marketcast_build_info{")[1].split("}")[0]
    assert "marketcast_bus_published_total" in ingest_metrics
    assert stats["totals"]["stages"]["bus_hop"]["count"] > 0


async def test_position_ops_on_an_edge_without_a_shard_are_storage_unavailable(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with edge_node(edge_settings(nats_server.url)) as edge, connect(edge.url) as ws:
        request = {"op": "position.close", "id": 5, "position_id": "p-1"}
        await ws.send(orjson.dumps(request).decode())
        unauthenticated = orjson.loads(await ws.recv())
        token = TokenAuthority(SECRET.encode()).issue("acct-1", ttl=60)
        await ws.send(orjson.dumps({"op": "auth", "id": 6, "token": token}).decode())
        assert orjson.loads(await ws.recv())["type"] == "ack"
        await ws.send(orjson.dumps(request).decode())
        no_shard = orjson.loads(await ws.recv())
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{edge.http_url}/health")).json()
            metrics = (await http.get(f"{edge.http_url}/metrics")).text
    assert (unauthenticated["code"], unauthenticated["id"]) == ("auth_required", 5)
    assert (no_shard["code"], no_shard["id"]) == ("storage_unavailable", 5)
    # The operator sees it on the edge: one op routed, no shard answered it in time (the
    # unauthenticated one never reached the shards' client).
    assert health["positions"] == {
        "watched_accounts": 0,
        "ops": 1,
        "acks": 0,
        "refusals": 0,
        "unavailable": 1,
        "late_answers": 0,
        "bad_answers": 0,
        "profit_batches": 0,
        "dropped_batches": 0,
        "watch_failures": 0,
    }
    values = unlabelled_samples(metrics)
    assert values["marketcast_edge_positions_ops_total"] == 1
    assert values["marketcast_edge_positions_unavailable_total"] == 1
    assert values["marketcast_edge_positions_acks_total"] == 0


async def test_the_single_process_keeps_seq_growing_across_restarts(tmp_path: Path) -> None:
    settings = ingest_settings(tmp_path / "one.db", "nats://unused:4222").with_role("all")
    last: dict[str, int] = {}
    for run in range(2):
        async with ingest_node(settings) as server:
            names = server.registry.instruments()
            await eventually(lambda s=server, n=names: all_live(s.registry, n), f"run {run} up")
            for name in names:
                snapshot = server.registry.get(name)
                assert snapshot is not None and snapshot.seq > last.get(name, -1)
                last[name] = snapshot.seq
            nbbo = server.registry.nbbo("BTC-USDT")
            assert nbbo is not None and nbbo.seq > last.get("nbbo", -1)
            last["nbbo"] = nbbo.seq


async def test_an_edge_fails_over_between_two_ingests_without_seq_going_back(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        edge = await stack.enter_async_context(edge_node(edge_settings(nats_server.url)))
        primary_stack = await stack.enter_async_context(contextlib.AsyncExitStack())
        primary = await primary_stack.enter_async_context(
            ingest_node(ingest_settings(tmp_path / "primary.db", nats_server.url))
        )
        names = primary.registry.instruments()
        await eventually(lambda: all_live(edge.registry, names), "live from the primary")
        tracks = edge.edge.follower.tracks
        assert primary.bus is not None and followed_sources(edge, names) == {
            primary.bus.publisher.source
        }
        standby = await stack.enter_async_context(
            ingest_node(ingest_settings(tmp_path / "standby.db", nats_server.url))
        )
        await eventually(lambda: all_live(standby.registry, names), "the standby is live")
        ws = await stack.enter_async_context(bbo_client(edge.url, names))
        before = await collect_bbo(ws, 30)
        await primary_stack.aclose()  # the primary stops: the edge follows the standby
        after = await collect_bbo(ws, 60)
        assert standby.bus is not None
        assert followed_sources(edge, names) == {standby.bus.publisher.source}
        await eventually(lambda: all_live(edge.registry, names), "live from the standby")
        assert edge.edge.follower.counters.failovers == len(names)
        assert all(tracks[name].served_seq >= 0 for name in names)
    assert seqs_grow(before + after)


def followed_sources(edge: EdgeServer, names: list[str]) -> set[int | None]:
    """The sources the edge follows for ``names``."""
    return {edge.edge.follower.tracks[name].source for name in names}
