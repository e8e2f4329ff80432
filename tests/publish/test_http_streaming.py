"""Streamed HTTP answers (``StreamedResponse``: the history route's): chunked bodies that
outlive the request-head deadline, HEAD without the body, auth before anything is read,
a 503 for a body that fails at once and a cut-short body for one that fails later."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncGenerator
from http import HTTPStatus

import httpx
import pytest

import publish.server
from app.commands.history import history
from publish.auth import AuthPolicy, TokenAuthority
from publish.http import HttpRequest, StreamedResponse
from tests.publish.support import running

TOKENS = TokenAuthority(b"0123456789abcdef-stream-secret")


class Body:
    """A streamed body: ``chunks`` with a pause before each; counts whether it started."""

    def __init__(self, chunks: list[bytes], pause: float = 0.0, fail_at: int = -1) -> None:
        self.chunks, self.pause, self.fail_at = chunks, pause, fail_at
        self.started = 0

    def route(self, request: HttpRequest) -> StreamedResponse:
        return StreamedResponse(HTTPStatus.OK, "application/x-ndjson", self._body())

    async def _body(self) -> AsyncGenerator[bytes, None]:
        self.started += 1
        for index, chunk in enumerate(self.chunks):
            await asyncio.sleep(self.pause)
            if index == self.fail_at:
                raise ConnectionError("the database went away")
            yield chunk


async def test_a_stream_outlives_the_head_deadline_and_head_reads_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publish.server, "HEAD_TIMEOUT", 0.2)
    body = Body([b'{"n":%d}\n' % n for n in range(8)], pause=0.05)  # 0.4 s in all
    async with running() as m:
        m.server.routes.add("/v1/slow/", body.route, prefix=True)
        async with httpx.AsyncClient(base_url=m.server.http_url) as http:
            got = await http.get("/v1/slow/x")
            head = await http.head("/v1/slow/x")
        # A connection that never sends its head is closed at the deadline.
        reader, writer = await asyncio.open_connection("127.0.0.1", m.server.port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
    assert got.status_code == 200
    assert got.headers["transfer-encoding"] == "chunked"
    assert got.content == b"".join(body.chunks)
    assert (head.status_code, head.content, body.started) == (200, b"", 1)


async def test_a_body_that_fails_says_so() -> None:
    at_once, later = Body([b"a\n"], fail_at=0), Body([b"a\n", b"b\n", b"c\n"], fail_at=2)
    async with running() as m:
        m.server.routes.add("/v1/at-once/", at_once.route, prefix=True)
        m.server.routes.add("/v1/later/", later.route, prefix=True)
        async with httpx.AsyncClient(base_url=m.server.http_url) as http:
            refused = await http.get("/v1/at-once/x")
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/v1/later/x")
    assert refused.status_code == 503
    assert refused.json()["code"] == "storage_unavailable"


async def test_a_streamed_market_data_route_needs_the_token_first() -> None:
    body = Body([b"x\n"])
    policy = AuthPolicy(tokens=TOKENS, market_data_requires_auth=True)
    async with running(auth=policy) as m:
        m.server.routes.add("/v1/history/bbo/", body.route, prefix=True)
        async with httpx.AsyncClient(base_url=m.server.http_url) as http:
            refused = await http.get("/v1/history/bbo/x")
            token = TOKENS.issue("acct-1", ttl=60)
            served = await http.get(
                "/v1/history/bbo/x", headers={"Authorization": f"Bearer {token}"}
            )
        # marketcast history sends the token the same way.
        out, err = io.BytesIO(), io.StringIO()
        without = await history(m.server.http_url, "x", out=out, err=err)
        with_token = await history(m.server.http_url, "x", token=token, out=out, err=err)
    assert (refused.status_code, refused.json()["code"]) == (401, "auth_required")
    assert (served.status_code, served.content, body.started) == (200, b"x\n", 2)
    assert (without, with_token, out.getvalue()) == (1, 0, b"x\n")
    assert err.getvalue() == "marketcast: auth_required: this route needs a token\n"
