"""One connection's position ops (``position.open``/``position.close``).

They go to a ``publish.position_service.PositionService``: the position book in one
process, the owning positions shard (over the bus) on an edge of a cluster. The caller
must act for an account (``Credentials``); the op then runs in a task of the
connection, because its reply waits for storage. The ack is queued by the service the
moment the change commits (``acknowledge``), before the profit engine hears of it,
so the ack always precedes the position's first profit frame on this connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from publish.counters import Counters
from publish.credentials import Credentials
from publish.exceptions import RequestError
from publish.outbox import Outbox
from publish.position import Position
from publish.position_service import PositionService
from publish.protocol import (
    ErrorCode,
    Op,
    PositionCloseRequest,
    PositionOpenRequest,
    RequestId,
    encode_error,
    encode_position_ack,
)

Spawn = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
Refuse = Callable[[RequestError], None]


class PositionRequests:
    """Serves position ops against ``positions`` (``None``: the server keeps none).

    ``spawn`` runs an op in the connection's task group; ``refuse`` answers a client's
    mistake (spending its error budget). ``cancel`` ends the waits when the connection
    ends: a change already queued is still stored, only its acknowledgement is lost.
    """

    def __init__(
        self,
        positions: PositionService | None,
        credentials: Credentials,
        outbox: Outbox,
        counters: Counters,
        *,
        spawn: Spawn,
        refuse: Refuse,
    ) -> None:
        self._positions = positions
        self._credentials = credentials
        self._outbox = outbox
        self._counters = counters
        self._spawn = spawn
        self._refuse = refuse
        self._running: set[asyncio.Task[None]] = set()

    def serve(self, request: PositionOpenRequest | PositionCloseRequest) -> None:
        """Check the caller, then start the op; ``RequestError`` refuses at once."""
        if self._positions is None:
            raise RequestError(ErrorCode.UNKNOWN_OP, "this server keeps no positions", request.id)
        account = self._credentials.account
        if account is None:
            raise RequestError(
                ErrorCode.AUTH_REQUIRED, "authenticate first (op auth, unexpired token)", request.id
            )
        task = self._spawn(self._run(self._positions, account, request))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def cancel(self) -> None:
        for task in self._running:
            task.cancel()

    async def _run(
        self,
        positions: PositionService,
        account: str,
        request: PositionOpenRequest | PositionCloseRequest,
    ) -> None:
        try:
            if isinstance(request, PositionOpenRequest):
                await positions.open(
                    account,
                    position_id=request.position_id,
                    instrument=request.instrument,
                    side=request.side,
                    qty=request.qty,
                    price=request.price,
                    acknowledge=partial(self._ack, request.id, Op.POSITION_OPEN),
                )
            else:
                await positions.close(
                    account,
                    request.position_id,
                    acknowledge=partial(self._ack, request.id, Op.POSITION_CLOSE),
                )
        except RequestError as exc:
            if exc.code is ErrorCode.STORAGE_UNAVAILABLE:
                # The server's trouble, not the client's: it spends no error budget.
                self._counters.errors_sent += 1
                self._outbox.reply(encode_error(exc.code, exc.message, request.id))
            else:
                self._refuse(RequestError(exc.code, exc.message, request.id))

    def _ack(self, request_id: RequestId, op: Op, position: Position) -> None:
        self._outbox.reply(encode_position_ack(request_id, op, position))
