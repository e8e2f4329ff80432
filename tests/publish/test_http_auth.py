"""HTTP routes under ``[auth]``: market data needs a bearer token when
``market_data_requires_auth`` is on, operator pages an operator token when
``operator_requires_auth`` is on, /health never needs one."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
from websockets.http11 import Response

from book.status import InstrumentState
from publish.auth import AuthPolicy, TokenAuthority
from publish.http import HttpRequest, http_response
from publish.metrics import LatencyRecorder, Metrics
from publish.metrics.pages import MetricsPages
from tests.app.chromium import CHROMIUM, Page, browser, open_page
from tests.publish.support import BTC, Market, bbo, error, running

SECRET = b"0123456789abcdef-http-secret"
TOKENS = TokenAuthority(SECRET)
MARKET = ("/v1/bbo/" + BTC, "/v1/book/" + BTC, "/v1/extra/x")
OPERATOR = ("/dashboard", "/stats", "/metrics")


def extra(request: HttpRequest) -> Response:
    return http_response(HTTPStatus.OK, b"extra", "text/plain")


def prepare(m: Market) -> None:
    m.feed.status(BTC, InstrumentState.LIVE)
    m.feed.quote(BTC, ("1", "2"), ("3", "4"))
    # A route added without saying who may read it is market data (the safe default).
    m.server.routes.add("/v1/extra/", extra, prefix=True)
    metrics = Metrics(LatencyRecorder(), registry=m.fanout.registry, fanout=m.fanout.counters)
    MetricsPages(metrics).install(m.server.routes)


async def statuses(
    m: Market, paths: tuple[str, ...], headers: dict[str, str] | None = None, query: str = ""
) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=m.server.http_url, headers=headers) as http:
        return {path: (await http.get(path + query)).status_code for path in paths}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_market_data_over_http_needs_a_token_when_required() -> None:
    policy = AuthPolicy(tokens=TOKENS, market_data_requires_auth=True)
    async with running(auth=policy) as m:
        prepare(m)
        everything = MARKET + OPERATOR
        assert await statuses(m, everything) == dict.fromkeys(everything, 401)
        assert await statuses(m, ("/health",)) == {"/health": 200}
        token = TOKENS.issue("acct-1", ttl=60)
        assert await statuses(m, everything, bearer(token)) == dict.fromkeys(everything, 200)
        async with httpx.AsyncClient(base_url=m.server.http_url) as http:
            refused = await http.get(MARKET[0])
            assert refused.json() == error(None, "auth_required", "this route needs a token")
            assert refused.headers["www-authenticate"] == 'Bearer realm="marketcast"'
            forged = await http.get(MARKET[0], headers=bearer(token[:-2] + "xx"))
            assert forged.status_code == 401
            assert forged.json()["code"] == "token_invalid"
            assert 'error="invalid_token"' in forged.headers["www-authenticate"]
            expired = TokenAuthority(SECRET, clock=lambda: 1.0).issue("a", ttl=1)
            late = await http.get(MARKET[0], headers=bearer(expired))
            assert (late.status_code, late.json()["code"]) == (401, "token_expired")
            ok = await http.get(MARKET[0], headers=bearer(token))
            assert ok.json() == {**bbo(BTC, 1, ("1", "2"), ("3", "4"))}
        # ?token= is taken by the dashboard page only (a browser cannot send the header).
        query = f"?token={token}"
        assert await statuses(m, ("/dashboard", "/stats", MARKET[0]), query=query) == {
            "/dashboard": 200,
            "/stats": 401,
            MARKET[0]: 401,
        }


@pytest.mark.parametrize("market_data_requires_auth", [False, True])
async def test_operator_pages_need_an_operator_token_when_required(
    market_data_requires_auth: bool,
) -> None:
    policy = AuthPolicy(
        tokens=TOKENS,
        market_data_requires_auth=market_data_requires_auth,
        operator_requires_auth=True,
    )
    async with running(auth=policy) as m:
        prepare(m)
        assert await statuses(m, OPERATOR) == dict.fromkeys(OPERATOR, 401)
        plain = bearer(TOKENS.issue("acct-1", ttl=60))
        assert await statuses(m, OPERATOR, plain) == dict.fromkeys(OPERATOR, 403)
        for role in ({"operator": True}, {"admin": True}):
            token = TOKENS.issue("ops", ttl=60, **role)
            assert await statuses(m, OPERATOR, bearer(token)) == dict.fromkeys(OPERATOR, 200)
        market = 401 if market_data_requires_auth else 200
        assert await statuses(m, MARKET) == dict.fromkeys(MARKET, market)
        assert await statuses(m, MARKET, plain) == dict.fromkeys(MARKET, 200)
        assert await statuses(m, ("/health",)) == {"/health": 200}
        async with httpx.AsyncClient(base_url=m.server.http_url) as http:
            forbidden = await http.get("/metrics", headers=plain)
            assert forbidden.json() == error(
                None, "forbidden", "this route needs an operator token"
            )


async def test_without_auth_settings_everything_is_open() -> None:
    async with running(auth=AuthPolicy(tokens=TOKENS)) as m:
        prepare(m)
        everything = MARKET + OPERATOR + ("/health",)
        assert await statuses(m, everything) == dict.fromkeys(everything, 200)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
async def test_the_dashboard_page_passes_its_query_token_on_to_stats(tmp_path: Path) -> None:
    policy = AuthPolicy(tokens=TOKENS, market_data_requires_auth=True)
    async with running(auth=policy) as m, browser(tmp_path / "chromium") as tools:
        prepare(m)
        token = TOKENS.issue("wall-screen", ttl=600)
        without = await open_page(tools, f"{m.server.http_url}/dashboard")
        with_token = await open_page(tools, f"{m.server.http_url}/dashboard?token={token}")

        async def status(page: Page) -> str:
            return str(await page.evaluate("document.getElementById('status')?.className || ''"))

        async with asyncio.timeout(30):
            while await status(with_token) != "ok":  # noqa: ASYNC110 (state in the browser)
                await asyncio.sleep(0.1)
        # The page itself needs the token: without one, the server answers 401 JSON.
        assert "auth_required" in str(await without.evaluate("document.body.innerText"))
