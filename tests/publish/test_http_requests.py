"""HTTP on the websocket port as raw bytes: every request gets one answer, then a clean
close (HEAD, other methods, pipelining, bodies, non-ASCII and malformed heads), and a
client that keeps misbehaving cannot flood the log."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from websockets.asyncio.client import connect

from book.status import InstrumentState
from publish.client import ServerLimits
from publish.logthrottle import RepeatThrottle
from tests.publish.support import BTC, Market, error, receive, running, send


async def exchange(m: Market, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh connection; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", m.server.port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """Status line, headers (lower-case names) and body of one HTTP response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_head_answers_the_headers_of_get_without_a_body() -> None:
    async with running() as m:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.quote(BTC, ("1", "2"), ("3", "4"))
        get = split(await exchange(m, f"GET /v1/bbo/{BTC} HTTP/1.1\r\n\r\n".encode()))
        head = split(await exchange(m, f"HEAD /v1/bbo/{BTC} HTTP/1.1\r\n\r\n".encode()))
        assert get[0] == head[0] == "HTTP/1.1 200 OK"
        assert head[1] == get[1] and int(head[1]["content-length"]) == len(get[2]) > 0
        assert head[2] == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "TRACE", "DELETE", "OPTIONS", "PATCH"])
async def test_other_methods_are_405_with_allow(method: str) -> None:
    async with running() as m:
        for path in ("/health", "/v1/bbo/x", "/ws", "/nowhere"):
            raw = f"{method} {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode()
            status, headers, body = split(await exchange(m, raw))
            assert (status, headers["allow"]) == ("HTTP/1.1 405 Method Not Allowed", "GET, HEAD")
            assert orjson.loads(body) == error(
                None, "method_not_allowed", f"{method} is not served here; use GET or HEAD"
            )


async def test_odd_requests_get_one_answer_and_a_clean_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cases = {
        "pipelined": (GET_HEALTH * 3, "HTTP/1.1 503 Service Unavailable"),
        "GET with a body": (
            b"GET /health HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 503 Service Unavailable",
        ),
        "chunked GET": (
            b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 503 Service Unavailable",
        ),
        "bare LF": (b"GET /health HTTP/1.0\n\n", "HTTP/1.1 503 Service Unavailable"),
        "non-ASCII path": ("GET /v1/bbo/é HTTP/1.1\r\n\r\n".encode(), "HTTP/1.1 400 Bad Request"),
        "percent-encoded non-ASCII": (
            b"GET /v1/bbo/%C3%A9 HTTP/1.1\r\n\r\n",
            "HTTP/1.1 404 Not Found",
        ),
        "invalid UTF-8 escapes": (b"GET /v1/bbo/%ff%fe HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        "not HTTP": (b"hello there\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        "absolute target": (b"GET http://x/health HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        "bad header": (b"GET /health HTTP/1.1\r\nno colon\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        "huge head": (
            b"GET /health HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        "websocket with a body": (
            b"GET /ws HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "HTTP/1.1 400 Bad Request",
        ),
    }
    with caplog.at_level(logging.DEBUG):
        async with running() as m:
            for name, (raw, expected) in cases.items():
                answer = await exchange(m, raw)
                status, headers, body = split(answer)
                assert status == expected, name
                assert headers["connection"] == "close", name
                assert int(headers["content-length"]) == len(body), name  # one answer only
                assert orjson.loads(body), name
            # The server still serves websockets after all that.
            async with connect(m.server.url) as ws:
                await send(ws, op="ping", id=1)
                assert await receive(ws) == {"type": "pong", "id": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]


async def test_per_address_limit_answers_503() -> None:
    async with running(ServerLimits(max_connections_per_ip=2)) as m:
        async with connect(m.server.url) as first, connect(m.server.url) as second:
            for ws in (first, second):
                await send(ws, op="ping", id=1)
                assert await receive(ws) == {"type": "pong", "id": 1}
            status, _, body = split(await exchange(m, GET_HEALTH))
            assert status == "HTTP/1.1 503 Service Unavailable"
            assert orjson.loads(body) == error(
                None, "too_many_connections", "this address holds its limit of 2 connections"
            )
        status, _, _ = split(await exchange(m, GET_HEALTH))
        assert status == "HTTP/1.1 503 Service Unavailable"  # only because nothing is live
        m.feed.status(BTC, InstrumentState.LIVE)
        status, _, _ = split(await exchange(m, GET_HEALTH))
        assert status == "HTTP/1.1 200 OK"


class Connection:
    def __init__(self, address: str) -> None:
        self.remote_address = (address, 1234)


def record(message: str, address: str | None) -> logging.LogRecord:
    made = logging.LogRecord("websockets.server", logging.ERROR, __file__, 1, message, (), None)
    if address is not None:
        made.websocket = Connection(address)
    return made


def test_repeated_log_lines_are_throttled_per_client() -> None:
    now = [0.0]
    throttle = RepeatThrottle(burst=2, interval=10.0, clock=lambda: now[0])
    passed = [throttle.filter(record("opening handshake failed", "10.0.0.1")) for _ in range(5)]
    assert passed == [True, True, False, False, False]
    assert throttle.filter(record("opening handshake failed", "10.0.0.2"))  # another client
    assert throttle.filter(record("something else", "10.0.0.1"))  # another line
    assert all(throttle.filter(record("no client", None)) for _ in range(5))
    now[0] = 10.0
    after = record("opening handshake failed", "10.0.0.1")
    assert throttle.filter(after)
    assert after.getMessage() == (
        "opening handshake failed (and 3 more like it from 10.0.0.1 dropped)"
    )
