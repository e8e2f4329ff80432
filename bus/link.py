"""One NATS connection, kept up for the life of a node.

``BusLink.run()`` connects (retrying with a capped backoff while NATS is not there yet,
so a node may start before its bus), then leaves reconnects to nats-py (forever, every
``reconnect_wait`` seconds) until cancelled, when it runs its ``on_close`` hooks (an
ingest's goodbye) and closes the connection.
Its ``LinkState`` is what /health and /metrics show of the connection.

It logs in with ``[bus]``'s credentials (``bus.credentials.BusCredentials``: user and
password, token, ``.creds`` file; TLS), passed to every connect. Credentials the server
refuses are logged as such, naming the bus (its URLs without a password) and the keys,
and retried like an unreachable server: a node never crashes over them, and its
/health says why it is not connected (``last_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client

from bus.credentials import BusCredentials, redact_url, redact_urls
from bus.exceptions import CredentialsError

log = logging.getLogger(__name__)

Hook = Callable[[Client], Awaitable[None]]


@dataclass(slots=True)
class LinkState:
    connected: bool = False
    connects: int = 0
    """Successful connections, the first one and every reconnect."""
    disconnects: int = 0
    errors: int = 0
    server: str = ""
    """The server last connected to (``nats://host:port``, without a password)."""
    last_error: str = ""
    """Why the last connect or the connection failed (empty once connected)."""


class BusLink:
    """Owns one nats-py ``Client``. ``on_connect`` hooks run after the first connection
    (subscribe there: nats-py renews subscriptions on reconnect); ``on_reconnect`` hooks
    after each later one (an edge asks for fresh state)."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        name: str,
        credentials: BusCredentials | None = None,
        reconnect_wait: float = 0.25,
        max_backoff: float = 2.0,
    ) -> None:
        self.servers = list(servers)
        self.shown = redact_urls(self.servers)
        """The servers as logs and pages show them (no password)."""
        self.name = name
        self.credentials = credentials if credentials is not None else BusCredentials()
        self.reconnect_wait = reconnect_wait
        self.max_backoff = max_backoff
        self.state = LinkState()
        self.client: Client | None = None
        self._connected = asyncio.Event()
        self._login_refused = False
        self._on_connect: list[Hook] = []
        self._on_reconnect: list[Hook] = []
        self._on_close: list[Hook] = []

    def on_connect(self, hook: Hook) -> None:
        self._on_connect.append(hook)

    def on_reconnect(self, hook: Hook) -> None:
        self._on_reconnect.append(hook)

    def on_close(self, hook: Hook) -> None:
        """Run ``hook`` while still connected, when the link is stopping (a goodbye)."""
        self._on_close.append(hook)

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    async def wait_connected(self) -> Client:
        """The client, once connected (now or after the next (re)connect)."""
        while not self.connected:
            self._connected.clear()
            await self._connected.wait()
        assert self.client is not None
        return self.client

    async def run(self) -> None:
        """Connect, keep connected until cancelled, then close. Never raises for NATS
        being down: it waits and retries."""
        client = await self._first_connection()
        try:
            for hook in self._on_connect:
                await hook(client)
            raise_swallowed_cancellation()
            await asyncio.Event().wait()
        finally:
            if client.is_connected:
                for hook in self._on_close:
                    try:
                        await hook(client)
                    except Exception:  # stopping anyway
                        log.exception("bus close hook failed")
            self.state.connected = False
            await close_quietly(client)

    async def _first_connection(self) -> Client:
        """Connect; nats-py itself retries a server that is not there yet (every
        ``reconnect_wait``), the loop here only a connect that raised.

        nats-py's connect runs in a task of its own: a cancellation that lands inside it
        may be swallowed (see ``raise_swallowed_cancellation``), after which it would
        retry a dead server for ever, so ours is never handed to it; on a stop that task
        is cancelled until it ends."""
        delay = 0.05
        while True:
            try:
                login = self.credentials.connect_options()  # files read at every connect
            except CredentialsError as exc:
                self._failed(f"bus {self.shown}: {exc}; retrying", exc)
                await asyncio.sleep(self.max_backoff)
                continue
            client = Client()
            connecting = asyncio.create_task(self._connect(client, login), name="bus:connect")
            try:
                await asyncio.shield(connecting)
            except asyncio.CancelledError:
                await _cancel_until_done(connecting)
                await close_quietly(client)  # no half-open socket left behind
                raise
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                await close_quietly(client)
                self._failed(f"bus {self.shown} refused the connection ({exc}); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            self.client = client
            self._mark_connected(client)
            log.info("bus connected to %s", self.state.server)
            return client

    async def _connect(self, client: Client, login: dict[str, Any]) -> None:
        await client.connect(
            servers=self.servers,
            name=self.name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
            ping_interval=2,
            max_outstanding_pings=2,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            **login,
        )

    def _mark_connected(self, client: Client) -> None:
        self.state.connected = True
        self.state.connects += 1
        url = client.connected_url
        self.state.server = redact_url(url.geturl()) if url is not None else ""
        self.state.last_error = ""
        self._login_refused = False
        self._connected.set()

    async def _disconnected(self) -> None:
        if self.state.connected:
            self.state.disconnects += 1
            log.warning("bus disconnected; reconnecting")
        self.state.connected = False

    async def _reconnected(self) -> None:
        client = self.client
        if client is None:
            return
        self._mark_connected(client)
        log.info("bus reconnected to %s", self.state.server)
        for hook in self._on_reconnect:
            try:
                await hook(client)
            except Exception:  # a hook's failure must not stop the link
                log.exception("bus reconnect hook failed")

    async def _error(self, exc: Exception) -> None:
        self.state.errors += 1
        if _refused_login(exc):
            self._login_refused = True
            self._failed(
                f"bus {self.shown} refused the credentials ({self.credentials.keys()}): "
                f"{exc}; retrying",
                exc,
            )
        elif self.state.connects == 0 and not self._login_refused:
            self._failed(f"bus {self.shown} not reachable ({exc}); retrying", exc)
        else:  # a refused login stays the reason: the server then drops the socket too
            log.debug("bus error: %s", exc)

    def _failed(self, message: str, exc: Exception) -> None:
        """Log ``message`` when the reason changes (not at every retry), keep it for
        /health."""
        reason = str(exc) or type(exc).__name__
        if reason != self.state.last_error:
            log.warning("%s", message)
        else:
            log.debug("%s", message)
        self.state.last_error = reason


def _refused_login(exc: Exception) -> bool:
    """NATS refused the credentials (or asked for some)."""
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text


def raise_swallowed_cancellation() -> None:
    """Raise the cancellation the current task was asked for but never got.

    nats-py catches a ``CancelledError`` that lands in some of its awaits (its connect
    and publish flush the socket inside ``except CancelledError: pass``) and returns as
    if nothing happened: a stop requested just then would be lost and the task would
    wait forever. Call this after awaiting nats-py, before waiting on anything else
    (never in cleanup, which runs while the task is cancelling)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


CANCEL_ATTEMPTS = 20


async def _cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it ends: nats-py may swallow one cancellation."""
    for _ in range(CANCEL_ATTEMPTS):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            if not task.cancelled():
                task.exception()  # retrieved: a failed connect is not news while stopping
            return
    log.warning("the bus connect did not stop after %d cancellations", CANCEL_ATTEMPTS)


async def close_quietly(client: Client) -> None:
    if not client.is_closed:
        try:
            async with asyncio.timeout(2.0):
                await client.close()
        except (TimeoutError, nats.errors.Error, OSError):
            log.warning("bus connection did not close cleanly")
    await _close_socket(client)


async def _close_socket(client: Client) -> None:
    """Close the client's socket if nats-py left it open.

    nats-py marks a client closed before it closes the socket, so a close cut short
    (a reset while it flushes, a cancellation at one of its awaits, both seen on a
    refused login) leaves a closed client holding an open socket that nothing would
    ever close. nats-py has no public handle on its transport, hence ``_transport``."""
    transport = getattr(client, "_transport", None)
    if transport is None:
        return
    transport.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await transport.wait_closed()
