"""One connection's position ops (``position.open``/``position.close``).

They go to a ``publish.position_service.PositionService``: the position book in one
process, the owning positions shard (over the bus) on an edge of a cluster. The caller
must act for an account (``Credentials``); the op is then submitted with a reply that
writes its ack or error frame, and the read loop goes on at once: the ops of one
connection wait for their commits side by side, none behind another. The ack is queued
by the service the moment the change commits, before the profit engine hears of it, so
the ack always precedes the position's first profit frame on this connection.
"""

from __future__ import annotations

from collections.abc import Callable

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

Refuse = Callable[[RequestError], None]


class PositionRequests:
    """Serves position ops against ``positions`` (``None``: the server keeps none).

    ``refuse`` answers a client's mistake (spending its error budget). ``cancel`` drops
    the answers still to come when the connection ends: a change already queued is still
    stored, only its acknowledgement is lost.
    """

    def __init__(
        self,
        positions: PositionService | None,
        credentials: Credentials,
        outbox: Outbox,
        counters: Counters,
        *,
        refuse: Refuse,
    ) -> None:
        self._positions = positions
        self._credentials = credentials
        self._outbox = outbox
        self._counters = counters
        self._refuse = refuse
        self.cancelled = False

    def serve(self, request: PositionOpenRequest | PositionCloseRequest) -> None:
        """Check the caller, then submit the op; ``RequestError`` refuses at once. O(1)."""
        if self._positions is None:
            raise RequestError(ErrorCode.UNKNOWN_OP, "this server keeps no positions", request.id)
        account = self._credentials.account
        if account is None:
            raise RequestError(
                ErrorCode.AUTH_REQUIRED, "authenticate first (op auth, unexpired token)", request.id
            )
        if isinstance(request, PositionOpenRequest):
            self._positions.submit_open(
                account,
                position_id=request.position_id,
                instrument=request.instrument,
                side=request.side,
                qty=request.qty,
                price=request.price,
                reply=_Reply(self, request.id, Op.POSITION_OPEN),
            )
        else:
            self._positions.submit_close(
                account, request.position_id, reply=_Reply(self, request.id, Op.POSITION_CLOSE)
            )

    def cancel(self) -> None:
        """The connection ended: answers that come later are dropped."""
        self.cancelled = True

    def acknowledge(self, request_id: RequestId, op: Op, position: Position) -> None:
        if not self.cancelled:
            self._outbox.reply(encode_position_ack(request_id, op, position))

    def refuse(self, request_id: RequestId, refusal: RequestError) -> None:
        if self.cancelled:
            return
        if refusal.code is ErrorCode.STORAGE_UNAVAILABLE:
            # The server's trouble, not the client's: it spends no error budget.
            self._counters.errors_sent += 1
            self._outbox.reply(encode_error(refusal.code, refusal.message, request_id))
        else:
            self._refuse(RequestError(refusal.code, refusal.message, request_id))


class _Reply:
    """The ``PositionReply`` of one request: its answer goes out as a frame with its id."""

    __slots__ = ("_requests", "_request_id", "_op")

    def __init__(self, requests: PositionRequests, request_id: RequestId, op: Op) -> None:
        self._requests = requests
        self._request_id = request_id
        self._op = op

    def acknowledge(self, position: Position) -> None:
        self._requests.acknowledge(self._request_id, self._op, position)

    def refuse(self, refusal: RequestError) -> None:
        self._requests.refuse(self._request_id, refusal)
