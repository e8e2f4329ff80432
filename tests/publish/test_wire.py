"""Wire formats: ``?ts=`` time formats and ``?compress=1`` frames, unit by unit (no
sockets), then with a real websockets client that negotiates permessage-deflate, and a
real Node.js ``ws`` client whose ``JSON.parse`` must keep every timestamp exact."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import PerMessageDeflate

from book.fixed import parse_fixed
from book.l2 import L2Book
from book.registry import BookRegistry
from book.status import InstrumentState
from publish.client import ClientSession, ServerLimits
from publish.fanout import Fanout
from publish.wire import (
    BATCHED,
    PLAIN,
    Framing,
    TimeFormat,
    WireFormat,
    WireRequest,
    format_timestamp,
    restamp,
    wire_format,
)
from tests.publish.support import (
    BTC,
    ETH,
    TS_SEND,
    HandSink,
    Market,
    bbo,
    clock,
    new_registry,
    receive,
    running,
    send,
    wait_until,
)
from tests.publish.trading import OPENED_TS, open_request, stored, trading
from tests.waiting import within

pytestmark = pytest.mark.timeout(60)

NS = 1_700_000_000_123_456_789
"""2023-11-14T22:13:20.123456789Z: above 2^53, so a JavaScript number cannot hold it."""


def test_each_time_format_writes_the_exact_instant() -> None:
    assert [format_timestamp(NS, fmt) for fmt in TimeFormat] == [
        NS,
        1_700_000_000_123_456,
        1_700_000_000_123,
        "2023-11-14T22:13:20.123456789Z",
    ]
    assert format_timestamp(1_000_000_000, TimeFormat.ISO) == "1970-01-01T00:00:01.000000000Z"


def test_restamp_converts_every_timestamp_at_any_depth_and_nothing_else() -> None:
    ack = orjson.dumps(
        {
            "type": "ack",
            "id": 7,
            "position": {"id": "p-1", "qty": "1", "opened_ts": NS, "closed_ts": None},
        }
    )
    message = orjson.dumps({"type": "bbo", "seq": NS, "ts_event": NS, "ts_send": NS + 1})
    assert orjson.loads(restamp(ack, TimeFormat.MS)) == {
        "type": "ack",
        "id": 7,
        "position": {"id": "p-1", "qty": "1", "opened_ts": 1_700_000_000_123, "closed_ts": None},
    }
    assert orjson.loads(restamp(message, TimeFormat.ISO)) == {
        "type": "bbo",
        "seq": NS,
        "ts_event": "2023-11-14T22:13:20.123456789Z",
        "ts_send": "2023-11-14T22:13:20.123456790Z",
    }
    assert restamp(message, TimeFormat.NS) is message


def test_the_query_names_the_format_and_a_bad_ts_is_refused() -> None:
    assert WireRequest.from_query("ts=iso&batch=1&compress=1") == WireRequest(
        TimeFormat.ISO, batch=True, compress=True
    )
    assert WireRequest.from_query("") == WireRequest()
    with pytest.raises(ValueError, match="ts must be one of ns|us|ms|iso, not 's'"):
        WireRequest.from_query("ts=s")
    assert wire_format(TimeFormat.MS, batch=True) is wire_format(TimeFormat.MS, batch=True)


def test_a_format_is_one_instance_however_its_settings_are_spelled() -> None:
    """A handshake spells every setting out; its format must still be ``PLAIN`` (or
    ``BATCHED``) itself, which frame caches and the one-message fast path go by."""
    assert WireRequest.from_query("").format([]) is PLAIN
    assert WireRequest.from_query("ts=ns&batch=0").format([]) is PLAIN
    assert WireRequest.from_query("batch=1").format([]) is BATCHED
    assert wire_format(TimeFormat.NS, batch=False, deflate_bits=None) is PLAIN
    assert wire_format(TimeFormat.US) is wire_format(TimeFormat.US, batch=False, deflate_bits=None)


def inflate(frames: bytes) -> Iterator[tuple[bool, bytes]]:
    """Each websocket frame of ``frames`` as (compressed, message), inflated as a client
    without context takeover does: a fresh decompressor per message."""
    while frames:
        first, length, start = frames[0], frames[1], 2
        assert first & 0x8F == 0x81, "a final, unmasked text frame"
        if length == 126:
            length, start = int.from_bytes(frames[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(frames[2:10], "big"), 10
        payload = frames[start : start + length]
        frames = frames[start + length :]
        if first & 0x40:
            decompressor = zlib.decompressobj(-15)
            yield True, decompressor.decompress(payload + b"\x00\x00\xff\xff")
        else:
            yield False, payload


def test_a_message_is_compressed_once_per_tick_and_stands_alone() -> None:
    framing = Framing()
    wire = wire_format(deflate_bits=12)
    first = orjson.dumps({"type": "bbo", "instrument": BTC, "ts_send": NS})
    second = orjson.dumps({"type": "bbo", "instrument": ETH, "ts_send": NS})
    frames = framing.frames(wire, [first, second])
    again = framing.frames(wire, [second])
    assert list(inflate(frames)) == [(True, first), (True, second)]
    assert again in frames  # the same compressed frame, not compressed a second time
    framing.end_tick()
    assert framing.frames(wire, [second]) == again
    batch = framing.frames(wire_format(TimeFormat.MS, batch=True, deflate_bits=9), [first])
    assert [orjson.loads(message) for _, message in inflate(batch)] == [
        [{"type": "bbo", "instrument": BTC, "ts_send": 1_700_000_000_123}]
    ]


@pytest.mark.parametrize(
    "wire",
    [
        wire_format(),
        wire_format(batch=True),
        wire_format(TimeFormat.MS),
        wire_format(TimeFormat.ISO, batch=True),
        wire_format(deflate_bits=12),
        wire_format(TimeFormat.US, batch=True, deflate_bits=9),
    ],
    ids=repr,
)
def test_one_message_framed_alone_is_what_frames_makes_of_it(wire: WireFormat) -> None:
    stamped = format_timestamp(NS, wire.ts)
    for length in (0, 125, 126, 70_000):  # every header length: 7, 16 and 64 bits
        message = orjson.dumps({"type": "bbo", "instrument": BTC, "ts_send": NS, "x": "y" * length})
        framed = Framing().frame(wire, message)
        assert framed == Framing().frames(wire, [message])
        [(compressed, payload)] = inflate(framed)
        assert compressed == (wire.deflate_bits is not None)
        sent = orjson.loads(payload)[0] if wire.batch else orjson.loads(payload)
        assert sent == {"type": "bbo", "instrument": BTC, "ts_send": stamped, "x": "y" * length}


async def test_subscribers_of_one_format_get_the_same_compressed_bytes() -> None:
    registry = new_registry()
    fanout = Fanout(registry, clock=clock)
    wire = wire_format(TimeFormat.ISO, deflate_bits=12)
    sinks = [HandSink() for _ in range(3)]
    sessions = [ClientSession(sink, fanout, limits=ServerLimits(), wire=wire) for sink in sinks]
    for session in sessions:
        session.handle(
            b'{"op":"subscribe","id":1,"channel":"bbo","instruments":["%s"]}' % BTC.encode()
        )
        session.outbox.flush()
    book = L2Book(BTC, capture_depth=1)
    book.load([(parse_fixed("1"), parse_fixed("2"))], [(parse_fixed("3"), parse_fixed("4"))])
    registry.publish(book.snapshot(ts_event=NS, ts_recv=NS + 1, ts_book=1))
    await wait_until(lambda: all(len(sink.writes) == 2 for sink in sinks), what="the tick")
    tick = sinks[0].writes[1]
    assert all(sink.writes[1] is tick for sink in sinks)  # built once, written to all three
    assert [orjson.loads(message) for _, message in inflate(tick)] == [
        {
            "type": "bbo",
            "instrument": BTC,
            "seq": 1,
            "bid": "1",
            "bid_qty": "2",
            "ask": "3",
            "ask_qty": "4",
            "ts_event": "2023-11-14T22:13:20.123456789Z",
            "ts_recv": "2023-11-14T22:13:20.123456790Z",
            "ts_send": format_timestamp(TS_SEND, TimeFormat.ISO),
        }
    ]
    assert [compressed for compressed, _ in inflate(sinks[0].writes[0])] == [True]  # the ack


def quote(registry: BookRegistry, price: int) -> None:
    """A change of BTC's book (its seq: ``price + 1``) stamped with realistic, 19-digit
    timestamps."""
    book = L2Book(BTC, capture_depth=1, seq=price)
    book.load(
        [(parse_fixed(str(price)), parse_fixed("1"))], [(parse_fixed("99999"), parse_fixed("2"))]
    )
    registry.publish(book.snapshot(ts_event=NS + price, ts_recv=NS + price + 1, ts_book=price))


async def subscribe_btc(ws: ClientConnection) -> None:
    await send(ws, op="subscribe", id=1, channel="bbo", instruments=[BTC])
    assert (await receive(ws))["type"] == "ack"


async def test_a_websockets_client_negotiates_deflate_and_reads_every_frame() -> None:
    async with running() as m:
        m.feed.status(BTC, InstrumentState.LIVE)
        async with (
            connect(f"{m.server.url}?compress=1") as compressed,
            connect(f"{m.server.url}?compress=1&batch=1&ts=us") as batched,
            connect(m.server.url) as plain,
        ):
            deflate = [
                e for e in compressed.protocol.extensions if isinstance(e, PerMessageDeflate)
            ]
            assert [(e.remote_no_context_takeover, e.remote_max_window_bits) for e in deflate] == [
                (True, 12)
            ]
            assert plain.protocol.extensions == []  # offered by the client, not asked for
            await subscribe_btc(compressed)
            await subscribe_btc(plain)
            await send(batched, op="subscribe", id=1, channel="bbo", instruments=[BTC])
            assert (await receive(batched))[0]["type"] == "ack"
            for price in range(100, 105):
                quote(m.feed.registry, price)
                await asyncio.sleep(0)  # one tick each
            got = [await receive(compressed) for _ in range(5)]
            got_plain = [await receive(plain) for _ in range(5)]
            got_batched = []
            while len(got_batched) < 5:
                got_batched += await receive(batched)
    expected = [
        {
            **bbo(BTC, price + 1, (str(price), "1"), ("99999", "2")),
            "ts_event": NS + price,
            "ts_recv": NS + price + 1,
        }
        for price in range(100, 105)
    ]
    assert got == got_plain == expected
    assert got_batched == [
        {
            **message,
            "ts_event": (NS + price) // 1000,
            "ts_recv": (NS + price + 1) // 1000,
            "ts_send": TS_SEND // 1000,
        }
        for message, price in zip(expected, range(100, 105), strict=True)
    ]


async def test_a_bad_ts_fails_the_handshake_with_400() -> None:
    async with running() as m:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{m.server.url}?ts=seconds"):
                pass
    assert refused.value.response.status_code == 400
    assert orjson.loads(refused.value.response.body) == {
        "type": "error",
        "id": None,
        "code": "bad_request",
        "message": "ts must be one of ns|us|ms|iso, not 'seconds'",
    }


NODE_CLIENT = """
const WebSocket = require("ws");
const [url, mode] = process.argv.slice(2);
const ws = new WebSocket(url);  // offers permessage-deflate, as browsers do
ws.on("open", () => ws.send(JSON.stringify(
  {op: "subscribe", id: 1, channel: "bbo", instruments: [process.argv[4]]})));
ws.on("message", (data) => {
  const message = JSON.parse(data.toString());
  if (message.type !== "bbo") return;
  // What JavaScript holds after JSON.parse, written out exactly (BigInt of a number is
  // its exact value; a string stays a string).
  const exact = (v) => typeof v === "number" ? BigInt(v).toString() : v;
  console.log(JSON.stringify({
    mode, compressed: ws.extensions.includes("permessage-deflate"),
    ts_event: exact(message.ts_event), ts_recv: exact(message.ts_recv),
    ts_send: exact(message.ts_send),
  }));
  ws.close();
});
"""


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Node.js script using the ``ws`` package, installed with npm in a temp dir."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the JavaScript client")
    directory = tmp_path_factory.mktemp("node-client")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent", "ws@8"],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=120,
    )
    script = directory / "client.js"
    script.write_text(NODE_CLIENT)
    return script


async def run_node(script: Path, url: str, mode: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "node", str(script), url, mode, BTC, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await within(process.communicate(), "the node client's exit", limit=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@asynccontextmanager
async def live_btc() -> AsyncIterator[Market]:
    async with running() as m:
        m.feed.status(BTC, InstrumentState.LIVE)
        quote(m.feed.registry, 100)
        yield m


async def test_javascript_json_parse_keeps_us_ms_and_iso_timestamps_exact(
    node_client: Path,
) -> None:
    async with live_btc() as m:
        seen = [
            await run_node(node_client, f"{m.server.url}?ts={mode}{extra}", mode)
            for mode, extra in (
                ("ns", ""),
                ("us", ""),
                ("ms", ""),
                ("iso", ""),
                ("ms", "&compress=1"),
            )
        ]
    event, recv = NS + 100, NS + 101
    exact = {
        fmt: {
            "ts_event": str(format_timestamp(event, fmt)),
            "ts_recv": str(format_timestamp(recv, fmt)),
            "ts_send": str(format_timestamp(TS_SEND, fmt)),
        }
        for fmt in TimeFormat
    }
    ns, us, ms, iso, ms_compressed = seen
    # The default: 19-digit integers, which JSON.parse rounds to the nearest double.
    assert ns["ts_event"] != exact[TimeFormat.NS]["ts_event"]
    assert {k: ns[k] for k in ("ts_event", "ts_recv", "ts_send")} != exact[TimeFormat.NS]
    for got, fmt, compressed in (
        (us, TimeFormat.US, False),
        (ms, TimeFormat.MS, False),
        (iso, TimeFormat.ISO, False),
        (ms_compressed, TimeFormat.MS, True),
    ):
        assert got == {"mode": fmt.value, "compressed": compressed, **exact[fmt]}


async def test_every_timestamp_of_every_message_follows_ts(tmp_path: Path) -> None:
    async with trading(tmp_path / "ts.db") as desk:
        desk.feed.status(BTC, InstrumentState.LIVE)
        desk.feed.quote(BTC, ("43000.1", "1"), ("43000.2", "1"))
        async with connect(f"{desk.server.url}?ts=ms") as ws:
            token = desk.tokens.issue("acct-1", ttl=3600)
            await send(ws, op="auth", id=1, token=token)
            auth_ack = await receive(ws)
            await send(ws, **open_request(2, "p-1"))
            open_ack = await receive(ws)
            await send(ws, op="subscribe", id=3, channel="profit", account="acct-1")
            await send(ws, op="subscribe", id=4, channel="bbo", instruments=[BTC])
            frames = [await receive(ws) for _ in range(5)]
            await send(ws, op="position.close", id=5, position_id="p-1")
            closing = [await receive(ws) for _ in range(3)]
    expires = desk.tokens.verify(token).expires_ns
    assert auth_ack["expires"] == expires // 1_000_000
    assert open_ack["position"] == stored("p-1", "acct-1", OPENED_TS // 1_000_000)
    assert [frame["type"] for frame in frames] == ["ack", "profit", "profit_total", "ack", "bbo"]
    ms_send = TS_SEND // 1_000_000
    assert [frame["ts_send"] for frame in frames if "ts_send" in frame] == [ms_send] * 3
    assert (frames[-1]["ts_event"], frames[-1]["ts_recv"]) == (0, 0)  # 1000 and 1007 ns
    assert closing[0]["position"]["closed_ts"] == (OPENED_TS + 2) // 1_000_000
    assert closing[1]["closed_ts"] == (OPENED_TS + 2) // 1_000_000
    assert closing[1]["ts_send"] == ms_send
