"""Bad input, generated: random bytes and text, random JSON, request-shaped objects with
wrong types, oversize requests. Over a real connection, each frame must get exactly one
reply (an ``error`` with a documented code, or the ack/pong of a request that happened
to be valid), the connection must stay usable, and nothing may be left subscribed once
it closes. Market data keeps flowing meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from book.status import InstrumentState
from publish.client import ServerLimits
from publish.protocol import Channel, ErrorCode, Op
from tests.publish.support import INSTRUMENTS, book_depths, receive, running, send, wait_until

MAX_REQUEST = 512
LIMITS = ServerLimits(
    max_request_bytes=MAX_REQUEST,
    max_subscriptions=4,
    ops_per_second=1e6,
    ops_burst=10_000,
    error_burst=10_000,
)
CODES = {code.value for code in ErrorCode}
REPLIES = {"ack", "error", "pong"}
MARKET = {"bbo", "book", "nbbo", "status", "metrics"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.lists(st.sampled_from([*INSTRUMENTS, "BTC-USDT", "x:Y-Z"]) | st.text(max_size=10))
requests = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from([op.value for op in Op] + ["", "SUBSCRIBE", "pong"]) | json_values,
        "id": st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.text(max_size=5)
        | json_values,
        "channel": st.sampled_from([channel.value for channel in Channel] + ["trades"])
        | json_values,
        "instruments": keys | json_values,
        "symbols": keys | json_values,
        "depth": st.integers(min_value=-3, max_value=30) | json_values,
        "token": st.text(max_size=40) | json_values,
        "account": st.text(max_size=8) | json_values,
        "position": json_values,
        "position_id": json_values,
    },
)
frames: st.SearchStrategy[str | bytes] = st.one_of(
    requests.map(lambda request: orjson.dumps(request).decode()),
    json_values.map(orjson.dumps),
    st.binary(max_size=80),
    st.text(max_size=80),
    st.integers(min_value=MAX_REQUEST - 16, max_value=MAX_REQUEST * 2).map(
        lambda n: '{"op":"ping","pad":"' + "x" * n + '"}'
    ),
)


async def replies_until_barrier(ws: ClientConnection, barrier: str) -> list[Any]:
    """Every reply (ack/error/pong) before the pong of the barrier ping sent now; market
    data in between is checked for shape and skipped."""
    await send(ws, op="ping", id=barrier)
    replies = []
    while (message := await receive(ws)) != {"type": "pong", "id": barrier}:
        assert isinstance(message, dict) and message.get("type") in REPLIES | MARKET, message
        if message["type"] in REPLIES:
            replies.append(message)
    return replies


async def exchange(sent: list[str | bytes]) -> None:
    async with running(LIMITS) as m:
        m.feed.status(INSTRUMENTS[0], InstrumentState.LIVE)
        async with connect(m.server.url) as ws:
            for index, frame in enumerate(sent):
                await ws.send(frame)
                m.feed.quote(INSTRUMENTS[index % 2], (str(100 + index), "1"), ("200", "1"))
                replies = await replies_until_barrier(ws, f"barrier-{index}")
                assert len(replies) == 1, (frame, replies)
                (reply,) = replies
                if reply["type"] == "error":
                    assert reply["code"] in CODES and reply["message"], reply
            # Still usable, and still serving market data.
            await send(ws, op="subscribe", id="last", channel="status")
            assert (await replies_until_barrier(ws, "end"))[-1]["id"] == "last"
        await wait_until(lambda: m.fanout.counters.clients == 0, what="session ended")
        assert m.fanout.subscriptions() == 0
        assert all(book_depths(m.fanout, instrument) == [] for instrument in INSTRUMENTS)
        assert m.fanout.registry.listener_errors == 0


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(frames, min_size=1, max_size=12))
def test_random_and_malformed_frames_each_get_one_reply_and_leak_nothing(
    sent: list[str | bytes],
) -> None:
    asyncio.run(exchange(sent))


NEVER = 1e-9
FLOOD_LIMITS = dict(
    max_request_bytes=MAX_REQUEST, max_frame_bytes=4 * MAX_REQUEST, max_subscriptions=4
)
huge_frames = st.integers(min_value=4 * MAX_REQUEST + 1, max_value=8 * MAX_REQUEST).map(
    lambda n: "x" * n
)


async def flood(sent: list[str | bytes], limits: ServerLimits) -> None:
    """Send every frame and a last ping without reading, then read one reply per frame
    (the ping's may be ``rate_limited`` too) or up to the close."""
    async with running(limits) as m:
        async with connect(m.server.url) as ws:
            with contextlib.suppress(ConnectionClosed):
                for frame in sent:
                    await ws.send(frame)
                await send(ws, op="ping", id="last")
            received: list[Any] = []
            replies: list[Any] = []
            close = None
            try:
                while len(replies) < len(sent) + 1:
                    received.append(message := await receive(ws))
                    if message.get("type") in REPLIES:
                        replies.append(message)
            except ConnectionClosed as closed:
                close = closed.rcvd
        errors = [reply for reply in replies if reply["type"] == "error"]
        assert all(message.get("type") in REPLIES | MARKET for message in received)
        assert all(error["code"] in CODES and error["message"] for error in errors)
        huge = [index for index, frame in enumerate(sent) if len(frame) > 4 * MAX_REQUEST]
        if close is None:
            assert not huge and len(errors) <= limits.error_burst
        elif close.code == 1009:
            assert huge and len(replies) <= huge[0]
        else:
            assert (close.code, close.reason) == (4029, "too many errors")
            assert len(errors) == limits.error_burst and len(replies) <= len(sent)
        await wait_until(lambda: m.fanout.counters.clients == 0, what="session ended")
        assert (m.fanout.subscriptions(), m.fanout.crowds()) == (0, 0)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(frames | huge_frames, min_size=1, max_size=60),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=1, max_value=10),
)
def test_floods_get_replies_within_budgets_then_a_documented_close(
    sent: list[str | bytes], ops_burst: int, error_burst: int
) -> None:
    limits = ServerLimits(
        ops_per_second=NEVER,
        ops_burst=ops_burst,
        errors_per_second=NEVER,
        error_burst=error_burst,
        **FLOOD_LIMITS,
    )
    asyncio.run(flood(sent, limits))
