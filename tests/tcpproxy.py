"""A TCP proxy on loopback that a test can pause or cut: a real network outage between a
client (the server under test) and a real service (PostgreSQL), without touching the
service itself, which other tests and processes share.

- ``pause()``: bytes stop flowing both ways, connections stay open (a database that
  hangs); new connections are accepted and hang too.
- ``cut()``: every connection is closed and new ones are closed at once (a database
  that is down).
- ``restore()``: back to forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum
from types import TracebackType
from typing import Self


class ProxyState(StrEnum):
    FORWARDING = "forwarding"
    PAUSED = "paused"
    CUT = "cut"


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``; ``async with`` it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._state = ProxyState.FORWARDING
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.connections = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def state(self) -> ProxyState:
        return self._state

    def pause(self) -> None:
        self._state = ProxyState.PAUSED
        self._flowing.clear()

    def cut(self) -> None:
        self._state = ProxyState.CUT
        self._flowing.set()  # let the pumps run into their closed connections
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        self._state = ProxyState.FORWARDING
        self._flowing.set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._state is ProxyState.CUT:
            writer.close()
            return
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink, (writer, upstream_writer)))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                if self._state is ProxyState.CUT:
                    break
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in pair:
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
