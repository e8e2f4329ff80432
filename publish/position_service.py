"""The one seam between a connection's position ops and whoever keeps the positions.

``PositionService`` is what ``publish.position_requests.PositionRequests`` talks to. In
one process it is the ``publish.positions.PositionBook`` itself; on an edge of a cluster
it is a bus client that forwards each op to the positions shard owning the account
and answers with the shard's answer (``bus.position_client.ShardClient``). Either way an
op is a call that returns at once: its ``PositionReply`` is acknowledged with the
position as stored once the change is durable, before anything else hears of it, or
refused with a ``RequestError`` carrying one of the stable codes of
``publish.positions``. No task per op unless the service needs one (the bus client's
request/reply): the book answers from its commit callbacks.
"""

from __future__ import annotations

from typing import Protocol

from publish.positions import PositionReply


class PositionService(Protocol):
    """Opens and closes positions, durable before acknowledged."""

    def submit_open(
        self,
        account: str,
        *,
        position_id: str,
        instrument: str,
        side: str,
        qty: str,
        price: str,
        reply: PositionReply,
    ) -> None:
        """Start the open; ``reply`` is acknowledged with the open position as stored once
        committed, or refused. The very same open sent again gets the same position."""
        ...

    def submit_close(self, account: str, position_id: str, *, reply: PositionReply) -> None:
        """Start the close; ``reply`` is acknowledged with the closed position as stored
        once committed, or refused."""
        ...
