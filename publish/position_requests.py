"""One connection's position ops (``position.open``/``position.close``).

They go to a ``publish.position_service.PositionService``: the position book in one
process, the owning positions shard (over the bus) on an edge of a cluster. The caller
must act for an account (``Credentials``); the op is then submitted with a reply that
writes its ack or error frame, and the read loop goes on at once: the ops of one
connection wait for their commits side by side, none behind another. The ack is
written (``Outbox.reply_now``: at once unless something is queued ahead of it) the
moment the change commits, before the profit engine hears of it, so the ack always
precedes the position's first profit frame on this connection.

Every op that reaches the service is timed, from its submission (the request read,
parsed and its caller checked) to its answer queued for the client, ack or refusal:
``on_answered`` (the ``position_op`` stage of ``/metrics`` and the dashboard) gets the
duration once the answer is queued. In one process that spans the group-commit window,
the write and the hand-offs between the event loop and the writer; on an edge it also
spans the bus round trip and the shard's own ``position_op``. So an operator sees what
the server adds to an ack, apart from the network and the client. The start rides on
the op's reply (one clock read each way, one histogram record). A decorator around the
service, as this was timed before, cost an open about 5,000 more instructions of some
178,000 (a reply of its own per op and two more calls; callgrind's count, ``python -m
bench opcost``, alternated runs).
"""

from __future__ import annotations

import time
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
OnAnswered = Callable[[int], None]
"""Called with an op's duration in nanoseconds once its answer is queued."""


class PositionRequests:
    """Serves position ops against ``positions`` (``None``: the server keeps none).

    ``refuse`` answers a client's mistake (spending its error budget). ``on_answered``
    hears how long each op that reached ``positions`` took (module docstring; ``clock``:
    nanoseconds, monotonic). ``cancel`` drops the answers still to come when the
    connection ends: a change already queued is still stored, only its acknowledgement
    is lost (the op is still timed: the server's part of it was done).
    """

    def __init__(
        self,
        positions: PositionService | None,
        credentials: Credentials,
        outbox: Outbox,
        counters: Counters,
        *,
        refuse: Refuse,
        on_answered: OnAnswered | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._positions = positions
        self._credentials = credentials
        self._outbox = outbox
        self._counters = counters
        self._refuse = refuse
        self._on_answered = on_answered
        self._clock = clock
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
                reply=_Reply(self, request.id, Op.POSITION_OPEN, self._clock()),
            )
        else:
            reply = _Reply(self, request.id, Op.POSITION_CLOSE, self._clock())
            self._positions.submit_close(account, request.position_id, reply=reply)

    def cancel(self) -> None:
        """The connection ended: answers that come later are dropped."""
        self.cancelled = True

    def acknowledge(self, request_id: RequestId, op: Op, position: Position, started: int) -> None:
        if not self.cancelled:
            self._outbox.reply_now(encode_position_ack(request_id, op, position))
        self._answered(started)

    def refuse(self, request_id: RequestId, refusal: RequestError, started: int) -> None:
        if not self.cancelled:
            if refusal.code is ErrorCode.STORAGE_UNAVAILABLE:
                # The server's trouble, not the client's: it spends no error budget.
                self._counters.errors_sent += 1
                self._outbox.reply_now(encode_error(refusal.code, refusal.message, request_id))
            else:
                self._refuse(RequestError(refusal.code, refusal.message, request_id))
        self._answered(started)

    def _answered(self, started: int) -> None:
        if self._on_answered is not None:
            self._on_answered(self._clock() - started)


class _Reply:
    """The ``PositionReply`` of one request: its answer goes out as a frame with its id;
    ``started`` is when it was submitted (the requests' clock)."""

    __slots__ = ("_requests", "_request_id", "_op", "_started")

    def __init__(
        self, requests: PositionRequests, request_id: RequestId, op: Op, started: int
    ) -> None:
        self._requests = requests
        self._request_id = request_id
        self._op = op
        self._started = started

    def acknowledge(self, position: Position) -> None:
        self._requests.acknowledge(self._request_id, self._op, position, self._started)

    def refuse(self, refusal: RequestError) -> None:
        self._requests.refuse(self._request_id, refusal, self._started)
