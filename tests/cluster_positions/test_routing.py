"""Position ops through an edge to the owning shard, over a real nats-server and real
SQLite: acks after the shard's commit with the same codes as one process, retries,
profit relayed on demand, a shard that is down, and isolation between accounts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from app.positions_role import edge_positions
from book.registry import BookRegistry
from bus.link import BusLink
from bus.natsserver import NatsServer
from publish.fanout import Fanout
from tests.cluster_positions.cluster import (
    BTC,
    NotingReply,
    _run_all,
    _stop,
    accounts_of_shards,
    edge,
    ingest,
    login,
    open_request,
    place,
    settings_for,
    sqlite,
    start_shard,
)
from tests.publish.support import receive, send
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


async def test_ops_go_to_the_owning_shard_and_its_answer_comes_back(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    (a,), (b,) = accounts_of_shards(2)
    settings = settings_for(sqlite(tmp_path / "pos.db"))
    async with ingest(nats_server.url, BTC):
        shards = [
            await start_shard(settings, place(nats_server.url, shards=2, shard=k)) for k in (0, 1)
        ]
        try:
            await eventually(
                lambda: all(s.running.registry.status(BTC) for s in shards), "shards see BTC"
            )
            async with edge(place(nats_server.url, shards=2)) as node, connect(node.url) as ws:
                await login(ws, a)
                await send(ws, **open_request(1, "p-1"))
                ack = await receive(ws)
                assert ack["type"] == "ack" and ack["op"] == "position.open", ack
                assert ack["position"]["account"] == a and ack["position"]["qty"] == "2"
                # The same open again is a retry: the same position, the same opened_ts.
                await send(ws, **open_request(2, "p-1"))
                again = await receive(ws)
                assert again["position"] == ack["position"]
                # The same id with another order: refused with the code of one process.
                await send(ws, **open_request(3, "p-1", qty="3"))
                refused = await receive(ws)
                assert (refused["type"], refused["code"]) == ("error", "duplicate_position")
                await send(ws, **open_request(4, "p-2", instrument="sim:NOPE-USDT"))
                assert (await receive(ws))["code"] == "unknown_instrument"
                # Only shard 0 (a's) holds it, committed in its own SQLite file.
                owner, other = shards
                assert [p.id for p in owner.running.book.positions(a)] == ["p-1"]
                assert len(other.running.book) == 0
                assert (tmp_path / "pos-shard-0.db").exists()
                await send(ws, op="position.close", id=5, position_id="p-1")
                closed = await receive(ws)
                assert (
                    closed["op"] == "position.close" and closed["position"]["closed_ts"] is not None
                )
                assert owner.running.book.positions(a) == []
                # b's ops go to shard 1.
                async with connect(node.url) as ws_b:
                    await login(ws_b, b)
                    await send(ws_b, **open_request(1, "p-1", side="sell"))
                    assert (await receive(ws_b))["position"]["account"] == b
                assert [p.id for p in other.running.book.positions(b)] == ["p-1"]
        finally:
            for shard in shards:
                await shard.stop()


async def test_a_shard_that_is_down_answers_storage_unavailable_and_others_keep_acking(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    (a,), (b,) = accounts_of_shards(2)
    settings = settings_for(sqlite(tmp_path / "pos.db"))
    bus = place(nats_server.url, shards=2)
    async with ingest(nats_server.url, BTC):
        shard0 = await start_shard(settings, place(nats_server.url, shards=2, shard=0))
        shard1 = await start_shard(settings, place(nats_server.url, shards=2, shard=1))
        await eventually(
            lambda: shard0.running.registry.status(BTC) is not None, "shard 0 sees BTC"
        )
        await eventually(
            lambda: shard1.running.registry.status(BTC) is not None, "shard 1 sees BTC"
        )
        try:
            async with (
                edge(bus, ack_timeout=1.0) as node,
                connect(node.url) as ws_a,
                connect(node.url) as ws_b,
            ):
                await login(ws_a, a)
                await login(ws_b, b)
                await send(ws_a, **open_request(1, "before"))
                acked = await receive(ws_a)
                assert acked["type"] == "ack"
                await shard0.stop()
                await send(ws_a, **open_request(2, "while-down"))
                down = await receive(ws_a)
                assert (down["type"], down["code"]) == ("error", "storage_unavailable")
                await send(ws_b, **open_request(1, "b-1"))
                assert (await receive(ws_b))["type"] == "ack"
                # Back: the acked position was reloaded, a retry gets the very same ack.
                shard0 = await start_shard(settings, place(nats_server.url, shards=2, shard=0))
                await eventually(
                    lambda: shard0.running.registry.status(BTC) is not None, "shard 0 back"
                )
                assert [p.id for p in shard0.running.book.positions(a)] == ["before"]
                await send(ws_a, **open_request(3, "before"))
                assert (await receive(ws_a))["position"] == acked["position"]
        finally:
            await shard0.stop()
            await shard1.stop()


async def test_profit_is_relayed_to_the_accounts_subscribers_only(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    (a,), (b,) = accounts_of_shards(2)
    settings = settings_for(sqlite(tmp_path / "pos.db"))
    async with ingest(nats_server.url, BTC) as market:
        shards = [
            await start_shard(settings, place(nats_server.url, shards=2, shard=k)) for k in (0, 1)
        ]
        await eventually(
            lambda: all(s.running.registry.status(BTC) for s in shards), "shards see BTC"
        )
        try:
            bus = place(nats_server.url, shards=2)
            async with edge(bus) as first, edge(bus) as second, connect(first.url) as ws:
                await login(ws, a)
                await send(ws, **open_request(1, "p-1"))  # long 2 at 90, marked at the bid
                assert (await receive(ws))["type"] == "ack"
                # Another account's profit is not this token's to read.
                await send(ws, op="subscribe", id=2, channel="profit", account=b)
                forbidden = await receive(ws)
                assert (forbidden["type"], forbidden["code"]) == ("error", "forbidden")
                await send(ws, op="subscribe", id=3, channel="profit", account=a)
                assert (await receive(ws))["type"] == "ack"
                frames = {}
                while "profit" not in frames or "profit_total" not in frames:
                    message = await receive(ws)
                    frames[message["type"]] = message
                assert frames["profit"]["pnl"] == "20" and frames["profit"]["mark"] == "100"
                assert frames["profit_total"]["pnl"] == "20"
                market.quote(BTC, 110, 111)
                while True:
                    message = await receive(ws)
                    if message["type"] == "profit" and message["mark"] == "110":
                        break
                assert message["pnl"] == "40"
                assert first.positions.service.watching == [a]
                assert second.positions.service.watching == []
                owner = shards[0] if a in shards[0].running.shard.watched else shards[1]
                assert owner.running.shard.watched == [a]
                # While subscribed, a new position's ack comes before its first frame.
                await send(ws, **open_request(5, "p-2"))
                while (message := await receive(ws))["type"] != "ack":
                    assert message.get("position_id") != "p-2", "profit before the ack"
                assert message["position"]["id"] == "p-2"
                while (message := await receive(ws)).get("position_id") != "p-2":
                    assert message["type"].startswith("profit"), message
                await send(ws, op="unsubscribe", id=4, channel="profit", account=a)
                while (message := await receive(ws))["type"] != "ack":
                    assert message["type"].startswith("profit"), message
                await eventually(lambda: first.positions.service.watching == [], "unwatched")
                # b cannot close a's position through another edge: ids are per account.
                async with connect(second.url) as ws_b:
                    await login(ws_b, b)
                    await send(ws_b, op="position.close", id=1, position_id="p-1")
                    assert (await receive(ws_b))["code"] == "unknown_position"
                    # Naming another account in a request changes nothing: it is ignored,
                    # an edge sends the shard only the account the token acts for.
                    forged = open_request(2, "p-forged") | {"account": a}
                    forged["position"] |= {"account": a}
                    await send(ws_b, **forged)
                    answer = await receive(ws_b)
                    assert answer["type"] == "ack" and answer["position"]["account"] == b, answer
                assert [p.id for p in owner.running.book.positions(a)] == ["p-1", "p-2"]
        finally:
            for shard in shards:
                await shard.stop()


async def test_profit_resumes_by_itself_after_the_shard_restarts(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    (a,) = accounts_of_shards(1)[0]
    settings = settings_for(sqlite(tmp_path / "pos.db"))
    bus = place(nats_server.url, shards=1)
    async with ingest(nats_server.url, BTC) as market:
        shard = await start_shard(settings, bus)
        try:
            await eventually(lambda: shard.running.registry.status(BTC) is not None, "BTC")
            async with edge(bus) as node, connect(node.url) as ws:
                await login(ws, a)
                await send(ws, **open_request(1, "p-1"))
                assert (await receive(ws))["type"] == "ack"
                await send(ws, op="subscribe", id=2, channel="profit", account=a)
                assert (await receive(ws))["type"] == "ack"
                await shard.stop()
                shard = await start_shard(settings, bus)
                await eventually(lambda: shard.running.registry.status(BTC) is not None, "BTC")
                # The edge's next watch tells the new shard; it marks the reloaded position.
                await eventually(lambda: shard.running.shard.watched == [a], "watched again")
                market.quote(BTC, 130, 131)
                while (message := await receive(ws))["type"] != "profit" or message[
                    "mark"
                ] != "130":
                    assert message["type"].startswith("profit"), message
                assert message["pnl"] == "80"
        finally:
            await shard.stop()


async def test_an_edge_writes_each_answer_in_the_task_step_that_gave_it(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after the shard's answer reaches the op's reply, the edge's fan-out writes the
    replies queued (``flush_replies``), rather than at its next tick, after a poll."""
    ((a,),) = accounts_of_shards(1)
    events: list[str] = []
    fanout = Fanout(BookRegistry(), metrics_interval=None)
    monkeypatch.setattr(fanout, "flush_replies", lambda: events.append("flushed"))
    link = BusLink([nats_server.url], name="edge")
    positions = edge_positions(fanout, link, place(nats_server.url, shards=1), ack_timeout=2.0)
    async with ingest(nats_server.url, BTC):
        shard = await start_shard(
            settings_for(sqlite(tmp_path / "pos.db")), place(nats_server.url, shards=1)
        )
        task = asyncio.create_task(_run_all(link.run, positions.service.run))
        try:
            await eventually(lambda: bool(shard.running.registry.status(BTC)), "the shard sees BTC")
            await link.wait_connected()
            # The same id with another order is refused: each answer is then written.
            for qty, answer in (("2", "ack p-1"), ("3", "refused duplicate_position")):
                positions.service.submit_open(
                    a,
                    position_id="p-1",
                    instrument=BTC,
                    side="buy",
                    qty=qty,
                    price="90",
                    reply=NotingReply(events),
                )
                await eventually(lambda: answer in events, answer)  # noqa: B023
        finally:
            await _stop(task)
            await shard.stop()
    assert events == ["ack p-1", "flushed", "refused duplicate_position", "flushed"]
