"""HTTP GET on the websocket port: /v1/book and the route table (real httpx client)."""

from __future__ import annotations

from http import HTTPStatus

import httpx
from websockets.http11 import Response

from book.status import InstrumentState
from publish.http import HttpRequest, http_response
from tests.publish.support import BTC, CAPTURE_DEPTH, ETH, TS_SEND, error, running

BIDS = [("100", "1"), ("99.5", "2"), ("99", "3")]
ASKS = [("101", "1.5"), ("101.25", "0.000000000001")]


def book(depth: int) -> dict[str, object]:
    return {
        "type": "book",
        "instrument": BTC,
        "seq": 1,
        "depth": depth,
        "bids": [list(level) for level in BIDS[:depth]],
        "asks": [list(level) for level in ASKS[:depth]],
        "ts_event": 1_000,
        "ts_recv": 1_007,
        "ts_send": TS_SEND,
    }


async def test_book_route_depths_and_status_codes() -> None:
    async with running() as m, httpx.AsyncClient(base_url=m.server.http_url) as http:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.levels(BTC, BIDS, ASKS)
        m.feed.levels(ETH, BIDS, ASKS)  # still syncing
        bad_depth = error(
            None, "bad_request", f"depth must be an integer between 1 and {CAPTURE_DEPTH}"
        )
        cases = {
            f"/v1/book/{BTC}": (200, book(min(10, CAPTURE_DEPTH))),
            f"/v1/book/{BTC}?depth=1": (200, book(1)),
            "/v1/book/binance%3ABTC-USDT?depth=2": (200, book(2)),
            f"/v1/book/{BTC}?depth={CAPTURE_DEPTH}": (200, book(CAPTURE_DEPTH)),
            f"/v1/book/{BTC}?depth=0": (400, bad_depth),
            f"/v1/book/{BTC}?depth={CAPTURE_DEPTH + 1}": (400, bad_depth),
            f"/v1/book/{BTC}?depth=-1": (400, bad_depth),
            f"/v1/book/{BTC}?depth=two": (400, bad_depth),
            f"/v1/book/{BTC}?depth=": (200, book(min(10, CAPTURE_DEPTH))),
            f"/v1/book/{BTC}?depth=%C2%B2": (400, bad_depth),  # a superscript two
            f"/v1/book/{BTC}?depth=99999999999999999999": (400, bad_depth),
            f"/v1/book/{ETH}?depth=2": (
                503,
                error(None, "not_live", f"{ETH} is syncing (starting)"),
            ),
            "/v1/book/nope:X-Y": (
                404,
                error(None, "unknown_instrument", "unknown instrument 'nope:X-Y'"),
            ),
            "/v1/book/": (404, error(None, "unknown_instrument", "unknown instrument ''")),
        }
        for path, expected in cases.items():
            response = await http.get(path)
            assert (response.status_code, response.json()) == expected, path
            assert response.headers["content-type"] == "application/json"


async def test_routes_can_be_added_exact_or_by_prefix() -> None:
    seen: list[HttpRequest] = []

    def text(request: HttpRequest) -> Response:
        seen.append(request)
        return http_response(HTTPStatus.OK, f"tail={request.tail}".encode(), "text/plain")

    async with running() as m, httpx.AsyncClient(base_url=m.server.http_url) as http:
        m.server.routes.add("/extra", text)
        m.server.routes.add("/files/", text, prefix=True)
        exact = await http.get("/extra?a=1&a=2&b=")
        prefixed = await http.get("/files/x/y%20z")
        assert (exact.status_code, exact.headers["content-type"], exact.text) == (
            200,
            "text/plain",
            "tail=",
        )
        assert prefixed.text == "tail=x/y z"
        assert (await http.get("/extra/more")).status_code == 404
    assert [(r.path, r.query, r.tail, r.method) for r in seen] == [
        ("/extra", {"a": ["1", "2"]}, "", "GET"),
        ("/files/x/y z", {}, "x/y z", "GET"),
    ]
    assert seen[0].headers["User-Agent"].startswith("python-httpx/")
