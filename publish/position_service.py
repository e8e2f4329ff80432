"""The one seam between a connection's position ops and whoever keeps the positions.

``PositionService`` is what ``publish.position_requests.PositionRequests`` talks to. In
one process it is the ``publish.positions.PositionBook`` itself; on an edge of a cluster
it is a bus client that forwards each op to the positions shard owning the account and
returns the shard's answer (``bus.position_client.ShardClient``). Either way an op
returns only once the change is durable, calls ``acknowledge`` with the position as
stored before anything else hears of it, and refuses with a ``RequestError`` carrying
one of the stable codes of ``publish.positions``.
"""

from __future__ import annotations

from typing import Protocol

from publish.position import Position
from publish.positions import Acknowledge


class PositionService(Protocol):
    """Opens and closes positions, durable before acknowledged."""

    async def open(
        self,
        account: str,
        *,
        position_id: str,
        instrument: str,
        side: str,
        qty: str,
        price: str,
        acknowledge: Acknowledge | None = None,
    ) -> Position:
        """The open position as stored, once committed (``acknowledge``: called with it at
        the commit). The very same open sent again gets the same position."""
        ...

    async def close(
        self, account: str, position_id: str, *, acknowledge: Acknowledge | None = None
    ) -> Position:
        """The closed position as stored, once committed."""
        ...
