"""Headless Chromium driven over the Chrome DevTools protocol, for page tests.

The browser is Debian's ``chromium`` package (installed by .ci/run; tests install
nothing). ``Browser.page(url)`` opens a tab whose network requests are recorded, so a
test can tell what a page fetched; ``evaluate`` runs JavaScript in it; ``screenshot``
returns a PNG.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.waiting import within

CHROMIUM = shutil.which("chromium")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


class DevTools:
    """One DevTools websocket: commands get their reply by id; events are kept."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        command_id = next(self._ids)
        reply = self._replies[command_id] = asyncio.get_running_loop().create_future()
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send(orjson.dumps(message).decode())
        answer = await asyncio.wait_for(reply, 30)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer["result"]

    async def pump(self) -> None:
        async for raw in self._ws:
            message = orjson.loads(raw)
            if "id" in message:
                self._replies.pop(message["id"]).set_result(message)
            else:
                self.events.append(message)


class Page:
    def __init__(self, tools: DevTools, session: str) -> None:
        self._tools = tools
        self._session = session

    async def evaluate(self, expression: str) -> Any:
        """The JSON-able value of ``expression`` in the page."""
        result = await self._tools.call(
            "Runtime.evaluate", self._session, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        result = await self._tools.call(
            "Page.captureScreenshot", self._session, format="png", captureBeyondViewport=True
        )
        return base64.b64decode(result["data"])

    def requested_urls(self) -> list[str]:
        """Every URL the page requested so far."""
        return [
            event["params"]["request"]["url"]
            for event in self._tools.events
            if event.get("sessionId") == self._session
            and event["method"] == "Network.requestWillBeSent"
        ]


@contextlib.asynccontextmanager
async def browser(
    user_data: Path, *, width: int = 1400, height: int = 1800
) -> AsyncIterator[DevTools]:
    """A headless Chromium for the duration; killed on exit."""
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={user_data}",
        f"--window-size={width},{height}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = user_data / "DevToolsActivePort"
        async with asyncio.timeout(30):
            # Chromium writes the file once listening; there is nothing to await but it.
            while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        url = f"ws://127.0.0.1:{port}{path}"
        async with connect(url, max_size=64 * 2**20, close_timeout=1) as ws:
            tools = DevTools(ws)
            pump = asyncio.create_task(tools.pump())
            try:
                yield tools
                await tools.call("Browser.close")
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
    finally:
        if process.returncode is None:
            process.kill()
        await within(process.wait(), "chromium's exit")


async def open_page(tools: DevTools, url: str) -> Page:
    """A new tab with network events on, navigated to ``url``."""
    target = await tools.call("Target.createTarget", url="about:blank")
    attached = await tools.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
    session = attached["sessionId"]
    await tools.call("Network.enable", session)
    await tools.call("Page.enable", session)
    await tools.call("Page.navigate", session, url=url)
    return Page(tools, session)
