"""Admin ops over the websocket, for operators: ``admin.resync`` one instrument,
``admin.reconnect`` one venue.

Only a connection authenticated with a token that has the ``admin`` role may run them
(``marketcast token --account ops --admin``); anyone else gets ``forbidden``. The work is
done by an ``AdminControl`` (in the server process: ``app.admin.FeedAdmin`` over the feed
runners); each op is acknowledged once started, logged at WARNING with the account that
asked, and counted (``admin_resyncs``, ``admin_reconnects``, ``admin_refused``).
"""

from __future__ import annotations

import logging
from typing import Protocol

from publish.counters import Counters
from publish.credentials import Credentials
from publish.exceptions import RequestError
from publish.outbox import Outbox
from publish.protocol import AdminRequest, ErrorCode, Op, encode_admin_ack

log = logging.getLogger(__name__)


class AdminControl(Protocol):
    """What admin ops act on."""

    def resync(self, instrument: str, reason: str) -> bool:
        """Resync ``instrument``; False if no feed carries it."""
        ...

    def reconnect(self, venue: str, reason: str) -> bool:
        """Reconnect every connection of ``venue``; False if no feed is of that venue."""
        ...


class AdminRequests:
    """Serves one connection's admin ops (``control`` ``None``: this server has none)."""

    def __init__(
        self,
        control: AdminControl | None,
        credentials: Credentials,
        outbox: Outbox,
        counters: Counters,
    ) -> None:
        self._control = control
        self._credentials = credentials
        self._outbox = outbox
        self._counters = counters

    def serve(self, request: AdminRequest) -> None:
        """Check the admin role, act, log, count, acknowledge; ``RequestError`` refuses."""
        account = self._credentials.admin_account
        if account is None:
            self._counters.admin_refused += 1
            raise RequestError(
                ErrorCode.FORBIDDEN, "admin ops need a token with the admin role", request.id
            )
        control = self._control
        if control is None:
            raise RequestError(
                ErrorCode.UNKNOWN_OP, f"this server runs no {request.op.value}", request.id
            )
        reason = f"{request.op.value} by {account}"
        if request.op is Op.ADMIN_RESYNC:
            if not control.resync(request.target, reason):
                raise RequestError(
                    ErrorCode.UNKNOWN_INSTRUMENT,
                    f"no feed carries {request.target[:64]!r} right now",
                    request.id,
                )
            self._counters.admin_resyncs += 1
        else:
            if not control.reconnect(request.target, reason):
                raise RequestError(
                    ErrorCode.UNKNOWN_VENUE,
                    f"no connected feed of venue {request.target[:64]!r}",
                    request.id,
                )
            self._counters.admin_reconnects += 1
        log.warning("%s %s (asked by account %s)", request.op.value, request.target, account)
        self._outbox.reply(encode_admin_ack(request))
