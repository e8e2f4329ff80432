"""OKX's book channels beside ``books``: tick-by-tick (logged in), books5 and bbo-tbt,
from the parser to a runner kept live against the simulator, and the login."""

from __future__ import annotations

import orjson
import pytest
from websockets.asyncio.client import connect

from book.fixed import parse_fixed
from feeds.events import BookSnapshotEvent
from feeds.okx.adapter import OkxAdapter, okx_symbols
from feeds.okx.channels import RULES, OkxChannel, OkxCredentials, login_frame, login_sign
from feeds.okx.parser import OkxDeltaEvent, OkxParser, OkxSnapshotEvent
from feeds.simulator.okx import OkxSimulator
from feeds.symbols import SymbolMap
from tests.feeds import rig as rig_module
from tests.feeds.rig import books_equal_simulator
from tests.waiting import eventually

SYMBOLS = okx_symbols(["BTC-USDT", "BTC-USDT-PERP"])
BOOKS = {f"okx:{name}": inst_id for name, inst_id in SYMBOLS.items()}
KEY = OkxCredentials("key-1", "secret-1", "pass-1")


def test_login_frame_signs_the_timestamp_as_okx_documents() -> None:
    frame = orjson.loads(login_frame(KEY, "1538054050"))
    assert frame == {
        "op": "login",
        "args": [
            {
                "apiKey": "key-1",
                "passphrase": "pass-1",
                "timestamp": "1538054050",
                "sign": login_sign("secret-1", "1538054050"),
            }
        ],
    }
    # base64(HMAC-SHA256("secret-1", "1538054050GET/users/self/verify")), by openssl
    assert login_sign("secret-1", "1538054050") == "lpLp/AhcfJ7V8MdB8oSXX2wqqAcLCV99cqRR7l4PzBY="
    assert "secret-1" not in repr(KEY) and "pass-1" not in repr(KEY)


def test_the_parser_reads_every_book_channel() -> None:
    parser = OkxParser(SymbolMap("okx", SYMBOLS))
    row = [["61800.1", "0.5", "0", "2"]]
    tbt = {"asks": row, "bids": [], "ts": "1", "checksum": 0, "prevSeqId": 5, "seqId": 6}
    whole = {"asks": row, "bids": [["61800", "1", "0", "1"]], "ts": "1", "seqId": 7}
    for channel in ("books-l2-tbt", "books50-l2-tbt"):
        message = {"arg": {"channel": channel, "instId": "BTC-USDT"}, "action": "update"}
        (event,) = parser.parse(orjson.dumps({**message, "data": [tbt]}))
        assert isinstance(event, OkxDeltaEvent) and (event.prev_id, event.last_id) == (5, 6)
    for channel in ("books5", "bbo-tbt"):
        message = {"arg": {"channel": channel, "instId": "BTC-USDT"}, "data": [whole]}
        (event,) = parser.parse(orjson.dumps(message))
        assert isinstance(event, OkxSnapshotEvent) and isinstance(event, BookSnapshotEvent)
        assert event.update_id == 7
        assert event.asks == ((parse_fixed("61800.1"), parse_fixed("0.5")),)
        assert event.bids == ((parse_fixed("61800"), parse_fixed("1")),)


def test_a_tick_by_tick_channel_needs_credentials() -> None:
    with pytest.raises(ValueError, match="needs API credentials"):
        OkxAdapter(SymbolMap("okx", SYMBOLS), channel=OkxChannel.BOOKS_L2_TBT)
    adapter = OkxAdapter(
        SymbolMap("okx", SYMBOLS), channel=OkxChannel.BOOKS50_L2_TBT, credentials=KEY
    )
    handshake = adapter.handshake()
    assert handshake is not None
    (login,) = handshake.frames
    assert orjson.loads(login)["op"] == "login"
    (subscribe,) = adapter.subscribe_frames(list(BOOKS))
    assert orjson.loads(subscribe)["args"][0] == {"channel": "books50-l2-tbt", "instId": "BTC-USDT"}


@pytest.mark.parametrize("channel", list(OkxChannel))
async def test_a_runner_on_each_channel_keeps_the_venue_book(channel: OkxChannel) -> None:
    depth = min(RULES[channel].depth, 10)
    credentials = KEY if RULES[channel].needs_login else None
    simulator = OkxSimulator(
        updates_per_second=200, levels=60, seed=3, push_interval=0.02, credentials=KEY
    )

    def adapter(sim: OkxSimulator) -> OkxAdapter:
        return OkxAdapter(
            SymbolMap("okx", SYMBOLS), ws_base=sim.ws_url, channel=channel, credentials=credentials
        )

    async with rig_module.running_rig(simulator, adapter, list(BOOKS), depth) as rig:
        await books_equal_simulator(rig, BOOKS, depth)
        counters = rig.runner.counters
        assert (counters.gaps, counters.checksum_failures, counters.resyncs) == (0, 0, 0)
        assert all(simulator.snapshots_sent(inst, channel) == 1 for inst in SYMBOLS.values())
        if RULES[channel].incremental:
            assert min(rig.verified().values()) > 0  # checksums checked on the way


async def test_tick_by_tick_gaps_resync_only_that_instrument() -> None:
    simulator = OkxSimulator(
        updates_per_second=200, levels=60, seed=4, push_interval=0.02, credentials=KEY
    )

    def adapter(sim: OkxSimulator) -> OkxAdapter:
        return OkxAdapter(
            SymbolMap("okx", SYMBOLS),
            ws_base=sim.ws_url,
            channel=OkxChannel.BOOKS50_L2_TBT,
            credentials=KEY,
        )

    async with rig_module.running_rig(simulator, adapter, list(BOOKS), 10) as rig:
        simulator.drop_next("BTC-USDT")
        await eventually(lambda: rig.runner.counters.gaps == 1, "the dropped update is a gap")
        await eventually(
            lambda: simulator.snapshots_sent("BTC-USDT", OkxChannel.BOOKS50_L2_TBT) == 2,
            "BTC resubscribed",
        )
        await books_equal_simulator(rig, BOOKS, 10)
        assert simulator.snapshots_sent("BTC-USDT-SWAP", OkxChannel.BOOKS50_L2_TBT) == 1


async def test_the_simulator_refuses_tick_by_tick_without_a_good_login() -> None:
    async with OkxSimulator(credentials=KEY, updates_per_second=10) as simulator:  # noqa: SIM117
        async with connect(simulator.ws_url + "/ws/v5/public") as ws:
            arg = {"channel": "books-l2-tbt", "instId": "BTC-USDT"}
            await ws.send(orjson.dumps({"op": "subscribe", "args": [arg]}).decode())
            assert orjson.loads(await ws.recv())["code"] == "60011"
            wrong = OkxCredentials("key-1", "not-the-secret", "pass-1")
            await ws.send(login_frame(wrong, "1700000000"))
            assert orjson.loads(await ws.recv())["code"] == "60009"
            await ws.send(login_frame(KEY, "1700000000"))
            assert orjson.loads(await ws.recv())["event"] == "login"
            await ws.send(orjson.dumps({"op": "subscribe", "args": [arg]}).decode())
            assert orjson.loads(await ws.recv())["event"] == "subscribe"
            snapshot = orjson.loads(await ws.recv())
            assert (snapshot["arg"], snapshot["action"]) == (arg, "snapshot")
