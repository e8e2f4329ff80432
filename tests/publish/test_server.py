"""The server end to end: real websockets/httpx clients on loopback, port 0.

The registry is the server's real upstream interface, so the tests drive it exactly as a
feed does (``support.Feed``: L2Book snapshots, ``publish``, ``set_status``).
"""

from __future__ import annotations

import asyncio
import socket
from itertools import pairwise
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from websockets.frames import Frame, Opcode

from book.status import InstrumentState
from publish.client import ServerLimits
from publish.exceptions import ServerNotRunningError
from publish.fanout import Fanout
from publish.protocol import Channel, text_frame_header
from publish.requests import RequestHandler
from publish.server import MarketServer
from tests.publish.support import (
    BTC,
    ETH,
    INSTRUMENTS,
    KRAKEN_BTC,
    STATUS_TS,
    ack,
    bbo,
    clock,
    error,
    new_registry,
    receive,
    running,
    send,
    wait_until,
    within,
)

BID = ("43000.1", "0.5")
ASK = ("43000.2", "1.25")


async def test_subscribe_gets_ack_current_state_then_every_change_in_order() -> None:
    async with running() as m, connect(m.server.url) as ws:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.quote(BTC, BID, ASK)
        await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC])
        assert [await receive(ws), await receive(ws)] == [ack(1, "bbo", BTC), bbo(BTC, 1, BID, ASK)]
        changes = [
            (("43000.15", "0.00000001"), ASK),
            (None, ASK),
            (("42999.999999999999", "3"), None),
            (BID, ("43000.2", "1.250000000001")),
        ]
        received = []
        for bid, ask in changes:
            m.feed.quote(BTC, bid, ask)
            received.append(await receive(ws))
        assert received == [
            bbo(BTC, seq, bid, ask) for seq, (bid, ask) in enumerate(changes, start=2)
        ]


async def test_a_book_that_is_not_live_sends_no_state_on_subscribe() -> None:
    async with running() as m, connect(m.server.url) as ws:
        m.feed.quote(ETH, BID, ASK)  # still syncing
        await send(ws, op="subscribe", id=1, channel="bbo", instruments=[ETH])
        assert await receive(ws) == ack(1, "bbo", ETH)
        m.feed.quote(ETH, ("1", "1"), ASK)
        assert await receive(ws) == bbo(ETH, 2, ("1", "1"), ASK)


async def test_unsubscribe_stops_delivery() -> None:
    async with running() as m, connect(m.server.url) as ws:
        await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC, ETH])
        assert await receive(ws) == ack(1, "bbo", BTC, ETH)
        await send(ws, op="unsubscribe", id=2, channel="bbo", instruments=[BTC])
        assert await receive(ws) == ack(2, "bbo", BTC, op="unsubscribe")
        # BTC changes first in the same tick: had it been delivered it would come first.
        m.feed.quote(BTC, BID, ASK)
        m.feed.quote(ETH, BID, ASK)
        assert await receive(ws) == bbo(ETH, 1, BID, ASK)
        assert m.fanout.subscriber_count((Channel.BBO, BTC)) == 0


async def test_batch_frames_are_arrays_of_one_tick() -> None:
    async with running() as m, connect(m.server.url + "?batch=1") as ws:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.quote(BTC, BID, ASK)
        await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC, ETH])
        assert await receive(ws) == [ack(1, "bbo", BTC, ETH), bbo(BTC, 1, BID, ASK)]
        m.feed.quote(BTC, ("1", "2"), ASK)
        m.feed.quote(ETH, ("3", "4"), None)
        assert await receive(ws) == [bbo(BTC, 2, ("1", "2"), ASK), bbo(ETH, 1, ("3", "4"), None)]
        await send(ws, op="ping", id=2)
        assert await receive(ws) == [{"type": "pong", "id": 2}]


async def test_bad_input_gets_stable_error_codes_and_the_connection_stays_usable() -> None:
    limits = ServerLimits(max_request_bytes=200, max_subscriptions=2)
    async with running(limits) as m, connect(m.server.url) as ws:
        cases: list[tuple[str | bytes, object]] = [
            ("{nope", ("bad_json", None)),
            (b'{"op":"ping","id":{"x":1}}', ("bad_request", None)),
            ("[]", ("bad_request", None)),
            ('{"op":"fly","id":1}', ("unknown_op", 1)),
            ('{"op":"subscribe","id":2,"channel":"trades"}', ("unknown_channel", 2)),
            ('{"op":"subscribe","id":3,"channel":"bbo","instruments":"x"}', ("bad_request", 3)),
            ('{"op":"subscribe","id":4,"channel":"bbo","instruments":[1]}', ("bad_request", 4)),
            (
                '{"op":"subscribe","id":5,"channel":"bbo","instruments":["binance:BTC-USDT","x:Y-Z"]}',
                ("unknown_instrument", 5),
            ),
            (
                '{"op":"unsubscribe","id":6,"channel":"bbo","instruments":["x:Y-Z"]}',
                ("unknown_instrument", 6),
            ),
            ('{"op":"ping","pad":"' + "x" * 200 + '"}', ("too_large", None)),
            (
                orjson.dumps(
                    {
                        "op": "subscribe",
                        "id": 7,
                        "channel": "bbo",
                        "instruments": [BTC, ETH, KRAKEN_BTC],
                    }
                ),
                ("too_many_subscriptions", 7),
            ),
        ]
        replies = []
        for raw, _ in cases:
            await ws.send(raw)
            replies.append(await receive(ws))
        assert [(r["code"], r["id"]) for r in replies] == [expected for _, expected in cases]
        assert replies[7] == error(5, "unknown_instrument", "unknown instrument(s): x:Y-Z")
        assert replies[9] == error(None, "too_large", "a request may be at most 200 bytes")
        # Still usable, and nothing of the failed subscribes was applied.
        await send(ws, op="ping", id=8)
        assert await receive(ws) == {"type": "pong", "id": 8}
        await send(ws, op="subscribe", id=9, channel="bbo", instruments=[ETH])
        assert await receive(ws) == ack(9, "bbo", ETH)
        m.feed.quote(BTC, BID, ASK)
        m.feed.quote(ETH, BID, ASK)
        assert await receive(ws) == bbo(ETH, 1, BID, ASK)
        assert m.fanout.counters.errors_sent == len(cases)


async def test_requests_in_whole_fragmented_and_binary_frames_are_answered_in_order() -> None:
    # Whole text messages are served as they are read; the others go through websockets'
    # queue and the session's read loop, and a whole one behind them waits its turn.
    async with running() as m, connect(m.server.url) as ws:
        for request_id in range(12):
            request = f'{{"op":"ping","id":{request_id}}}'
            if request_id % 4 == 1:
                await ws.send([request[:5], request[5:9], request[9:]])  # fragmented
            elif request_id % 4 == 2:
                await ws.send(request.encode())  # binary
            else:
                await ws.send(request)
        assert [await receive(ws) for _ in range(12)] == [
            {"type": "pong", "id": request_id} for request_id in range(12)
        ]


class RawWebsocket:
    """A websocket client on a plain socket: what it writes reaches the server's reads
    byte for byte, split (or joined) exactly as the test wrote it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawWebsocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        return cls(reader, writer)

    @staticmethod
    def mask(payload: bytes, key: bytes) -> bytes:
        """``payload`` masked with ``key`` (RFC 6455), or unmasked: the same XOR."""
        return bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))

    @classmethod
    def masked_text(cls, payload: bytes, key: bytes = bytes((0x5A, 0xC3, 0x0F, 0x99))) -> bytes:
        """A client text frame of a short ``payload``, masked with ``key``."""
        return bytes((0x81, 0x80 | len(payload))) + key + cls.mask(payload, key)

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame (unmasked, at most 65,535 bytes here): opcode byte and
        payload."""
        opcode, length = await asyncio.wait_for(self.reader.readexactly(2), 5)
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        return opcode, await self.reader.readexactly(length)

    async def pongs(self, count: int) -> list[object]:
        return [orjson.loads((await self.frame())[1]) for _ in range(count)]


async def test_a_text_frame_of_invalid_utf8_closes_the_connection_1007() -> None:
    async with running() as m:
        ws = await RawWebsocket.open(m.server.port)
        ws.writer.write(ws.masked_text(b'{"op":"ping","id":1}'))
        opcode, payload = await ws.frame()
        assert (opcode, orjson.loads(payload)) == (0x81, {"type": "pong", "id": 1})
        ws.writer.write(ws.masked_text(b"\xff\xfe"))
        opcode, payload = await ws.frame()
        assert (opcode, int.from_bytes(payload[:2], "big")) == (0x88, 1007)  # close
        ws.writer.close()
        await wait_until(lambda: m.fanout.counters.clients == 0, what="session ended")


async def test_requests_split_anywhere_or_sent_together_are_all_answered_in_order() -> None:
    # A read may end inside a frame (websockets' parser then holds the frame's start) or
    # hold many frames; either way every request is answered once, in order.
    pings = [RawWebsocket.masked_text(b'{"op":"ping","id":%d}' % n) for n in range(40)]
    async with running() as m:
        ws = await RawWebsocket.open(m.server.port)
        ws.writer.write(b"".join(pings[:20]))  # twenty requests in one read
        assert await ws.pongs(20) == [{"type": "pong", "id": n} for n in range(20)]
        for n, ping in enumerate(pings[20:], start=20):
            cut = n % len(ping)  # the next frame starts inside this read
            ws.writer.write(ping[:cut])
            await ws.writer.drain()
            await asyncio.sleep(0.002)
            ws.writer.write(ping[cut:])
        assert await ws.pongs(20) == [{"type": "pong", "id": n} for n in range(20, 40)]
        ws.writer.close()


async def test_a_frame_whose_header_websockets_read_is_never_taken_for_a_new_frame() -> None:
    # A read ends just after a frame's header: websockets' parser now holds that frame,
    # and the next read is its payload, whatever it looks like. Here the payload is
    # chosen so that on the wire it is itself a whole ping frame (as plain ASCII, which
    # XOR with the outer key gives back): only websockets can tell it is not one.
    inner = RawWebsocket.masked_text(b'{"op":"ping","id":99}', bytes((0x11, 0x22, 0x93, 0xA4)))
    outer_key = bytes((0x80, 0x80, 0x00, 0x00))
    outer_payload = RawWebsocket.mask(inner, outer_key)
    assert outer_payload.isascii()
    outer = RawWebsocket.masked_text(outer_payload, outer_key)
    assert outer[6:] == inner  # the outer frame's payload on the wire is the ping frame
    async with running() as m:
        ws = await RawWebsocket.open(m.server.port)
        ws.writer.write(RawWebsocket.masked_text(b'{"op":"ping","id":1}') + outer[:6])
        await ws.writer.drain()
        await asyncio.sleep(0.01)
        ws.writer.write(outer[6:] + RawWebsocket.masked_text(b'{"op":"ping","id":3}'))
        first, refused, last = await ws.pongs(3)
        assert (first, last) == ({"type": "pong", "id": 1}, {"type": "pong", "id": 3})
        assert isinstance(refused, dict) and refused["code"] == "bad_json"
        ws.writer.close()


async def test_a_request_that_breaks_the_server_closes_only_its_connection_1011(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: RequestHandler, request: object) -> None:
        raise RuntimeError("a bug")

    async with running() as m, connect(m.server.url) as ws, connect(m.server.url) as other:
        monkeypatch.setattr(RequestHandler, "serve", broken)
        await send(ws, op="ping", id=1)
        with pytest.raises(ConnectionClosed) as closed:
            await within(ws.recv(), "the close")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        monkeypatch.undo()
        await send(other, op="ping", id=2)
        assert await receive(other) == {"type": "pong", "id": 2}
    assert "serving a request failed" in caplog.text


async def test_a_frame_over_the_hard_limit_closes_the_connection_1009() -> None:
    limits = ServerLimits(max_request_bytes=512, max_frame_bytes=1024)
    async with running(limits) as m, connect(m.server.url) as ws:
        await ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009  # message too big; the reason text is websockets'

        await wait_until(lambda: m.fanout.counters.clients == 0, what="session ended")


async def test_status_channel_sends_every_state_then_changes() -> None:
    async with running() as m, connect(m.server.url) as ws:
        m.feed.status(KRAKEN_BTC, InstrumentState.LIVE)
        await send(ws, op="subscribe", id=1, channel="status")
        assert [await receive(ws) for _ in range(4)] == [
            ack(1, "status"),
            {"type": "status", "instrument": BTC, "state": "syncing", "reason": "starting"},
            {"type": "status", "instrument": ETH, "state": "syncing", "reason": "starting"},
            {"type": "status", "instrument": KRAKEN_BTC, "state": "live", "reason": "synced"},
        ]
        m.feed.status(KRAKEN_BTC, InstrumentState.STALE, "book crossed")
        assert await receive(ws) == {
            "type": "status",
            "instrument": KRAKEN_BTC,
            "state": "stale",
            "reason": "book crossed",
        }


async def small_window_socket(port: int) -> socket.socket:
    """A connected client socket with a tiny receive buffer, so a client that stops
    reading backs the server up after a few kilobytes rather than megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def bid_update(seq: int) -> object:
    return bbo(BTC, seq, (str(1000 + seq), "1"), ASK)


async def test_lagging_client_gets_conflated_latest_state_and_the_other_every_tick() -> None:
    limits = ServerLimits(write_limit=1024, send_buffer_bytes=4096, slow_consumer_seconds=600)
    async with running(limits) as m:
        sock = await small_window_socket(m.server.port)
        async with (
            connect(m.server.url, sock=sock, max_queue=1) as lagging,
            connect(m.server.url) as steady,
        ):
            for ws in (lagging, steady):
                await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC])
                assert await receive(ws) == ack(1, "bbo", BTC)
            # Lock step with the steady client; the lagging one reads nothing meanwhile.
            seq = 0
            while m.fanout.counters.conflated < 50:
                seq = m.feed.quote(BTC, (str(1000 + seq + 1), "1"), ASK).seq
                assert await receive(steady) == bid_update(seq)
                assert seq < 10_000, "the lagging client never backed up"
            last = seq
            for _ in range(10):
                last = m.feed.quote(BTC, (str(1000 + last + 1), "1"), ASK).seq
                assert await receive(steady) == bid_update(last)
            caught_up: list[Any] = []
            while not caught_up or caught_up[-1]["seq"] != last:
                caught_up.append(await receive(lagging))
    seqs = [message["seq"] for message in caught_up]
    assert seqs == sorted(set(seqs)), "seq must only grow"
    assert any(b - a > 1 for a, b in pairwise(seqs)), "stale updates must be skipped"
    assert caught_up == [bid_update(seq) for seq in seqs]
    assert caught_up[-1] == bid_update(last)


async def test_slow_consumer_is_closed_with_4008_and_counted() -> None:
    limits = ServerLimits(write_limit=1024, send_buffer_bytes=4096, slow_consumer_seconds=0.05)
    async with running(limits) as m:
        sock = await small_window_socket(m.server.port)
        async with connect(m.server.url, sock=sock, max_queue=1) as ws:
            await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC])
            seq = 0
            for _ in range(50_000):
                if m.fanout.counters.slow_closes:
                    break
                seq = m.feed.quote(BTC, (str(1000 + seq + 1), "1"), ASK).seq
                await asyncio.sleep(0)
            assert m.fanout.counters.slow_closes == 1
            received: list[Any] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    received.append(await receive(ws))
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4008, "slow consumer")
        assert received[0] == ack(1, "bbo", BTC)
        seqs = [message["seq"] for message in received[1:]]
        assert seqs == sorted(set(seqs)), "seq must only grow"
        assert received[1:] == [bid_update(seq) for seq in seqs]
        await wait_until(lambda: m.fanout.counters.clients == 0, what="session ended")
        assert m.fanout.subscriber_count((Channel.BBO, BTC)) == 0


async def test_connection_limit_answers_503_and_frees_on_disconnect() -> None:
    async with running(ServerLimits(max_connections=1)) as m:
        async with connect(m.server.url) as first:
            await send(first, op="ping", id=1)
            assert await receive(first) == {"type": "pong", "id": 1}
            with pytest.raises(InvalidStatus) as refused:
                async with connect(m.server.url):
                    pass
            assert refused.value.response.status_code == 503
            assert orjson.loads(refused.value.response.body) == error(
                None,
                "too_many_connections",
                "the server holds its limit of 1 connections",
            )
        await wait_until(lambda: m.fanout.counters.clients == 0, what="first session ended")
        async with connect(m.server.url) as second:
            await send(second, op="ping", id=2)
            assert await receive(second) == {"type": "pong", "id": 2}


async def test_http_health_and_bbo_routes() -> None:
    async with running() as m, httpx.AsyncClient(base_url=m.server.http_url) as http:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.status(KRAKEN_BTC, InstrumentState.STALE, "gap 4 -> 6")
        m.feed.quote(BTC, BID, None)
        health = await http.get("/health")
        assert (health.status_code, health.headers["content-type"]) == (200, "application/json")
        body = health.json()
        connections = body.pop("connections")
        assert connections["websocket_sessions"] == 0 and connections["tcp_open"] == 1
        assert body == {
            "status": "partial",
            "failing": [],
            "live_instruments": 1,
            "venues": {
                "binance": {"syncing": 1, "live": 1, "stale": 0, "halted": 0},
                "kraken": {"syncing": 0, "live": 0, "stale": 1, "halted": 0},
            },
            "instruments": {
                BTC: {"state": "live", "reason": "synced", "ts": STATUS_TS},
                ETH: {"state": "syncing", "reason": "starting", "ts": 0},
                KRAKEN_BTC: {"state": "stale", "reason": "gap 4 -> 6", "ts": STATUS_TS},
            },
        }
        responses = [
            await http.get(f"/v1/bbo/{BTC}"),
            await http.get("/v1/bbo/binance%3AETH-USDT"),
            await http.get("/v1/bbo/nope:X-Y"),
            await http.get("/v2/anything"),
        ]
        assert [(r.status_code, r.json()) for r in responses] == [
            (200, bbo(BTC, 1, BID, None)),
            (503, error(None, "not_live", f"{ETH} is syncing (starting)")),
            (404, error(None, "unknown_instrument", "unknown instrument 'nope:X-Y'")),
            (404, error(None, "not_found", "no route '/v2/anything'")),
        ]
        m.feed.status(ETH, InstrumentState.LIVE)
        m.feed.status(KRAKEN_BTC, InstrumentState.LIVE)
        assert (await http.get("/health")).json()["status"] == "ok"


async def test_health_is_503_when_no_instrument_is_live_or_a_check_fails() -> None:
    async with running() as m, httpx.AsyncClient(base_url=m.server.http_url) as http:
        healthy = {"bus": True}
        m.server.routes.add_health_check("bus", lambda: (healthy["bus"], {"up": healthy["bus"]}))

        async def health() -> tuple[int, str, list[str], object]:
            response = await http.get("/health")
            body = response.json()
            return response.status_code, body["status"], body["failing"], body["bus"]

        assert await health() == (503, "degraded", ["no live instrument"], {"up": True})
        for instrument in INSTRUMENTS:
            m.feed.status(instrument, InstrumentState.LIVE)
        assert await health() == (200, "ok", [], {"up": True})
        healthy["bus"] = False
        assert await health() == (503, "degraded", ["bus"], {"up": False})
        head = await http.head("/health")
        assert (head.status_code, head.content) == (503, b"")
        assert int(head.headers["content-length"]) > 0


async def test_lifecycle_port_url_and_stop_closes_clients_going_away() -> None:
    registry = new_registry()
    fanout = Fanout(registry, clock=clock)
    server = MarketServer(registry, fanout)
    with pytest.raises(ServerNotRunningError):
        _ = server.port
    await server.start()
    try:
        assert server.port > 0
        assert server.url == f"ws://127.0.0.1:{server.port}/ws"
        assert server.http_url == f"http://127.0.0.1:{server.port}"
        async with connect(server.url) as ws:
            await send(ws, op="subscribe", id=1, channel="status")
            assert await receive(ws) == ack(1, "status")
            await server.stop()
            with pytest.raises(ConnectionClosedOK) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    finally:
        await server.stop()
    with pytest.raises(ServerNotRunningError):
        _ = server.url
    assert (fanout.counters.clients, fanout.subscriber_count((Channel.STATUS, ""))) == (0, 0)
    with pytest.raises(ValueError, match="same registry"):
        MarketServer(new_registry(), fanout)


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_frame_headers_are_the_ones_websockets_serializes(length: int) -> None:
    payload = b"x" * length
    assert text_frame_header(length) + payload == Frame(Opcode.TEXT, payload).serialize(
        mask=False, extensions=[]
    )


async def test_frames_of_every_header_size_reach_a_websockets_client_intact() -> None:
    """Status of 3,000 instruments: one ~100-byte frame each unbatched, one ~280 kB
    frame (64-bit length) batched, and replies in between; the client parses them all."""
    instruments = [f"sim:S{index:04d}-USD" for index in range(3_000)]
    async with running(instruments=instruments) as m:
        expected = [
            {"type": "status", "instrument": name, "state": "syncing", "reason": "starting"}
            for name in sorted(instruments)
        ]
        async with connect(m.server.url) as ws:
            await send(ws, op="subscribe", id=1, channel="status")
            assert await receive(ws) == ack(1, "status")
            assert [await receive(ws) for _ in instruments] == expected
        async with connect(m.server.url + "?batch=1") as ws:
            await send(ws, op="subscribe", id=1, channel="status")
            assert await receive(ws) == [ack(1, "status"), *expected]
