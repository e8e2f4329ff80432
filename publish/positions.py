"""The position book: every open position of every account, durable before acknowledged.

A position (``publish.position.Position``) is opened by ``open`` and closed by ``close``;
both return only once the store has made the change durable (the flusher's group commit:
every position of one 5 ms window shares one transaction), so an acknowledged position
survives a crash of the process and is reloaded by ``load`` on start. The book reaches
storage through one ``PositionStore`` (insert a new position if its id is free, write a
change, load the open ones). Whether an id is free is decided inside the commit that
stores the open, so an open costs no storage round trip before it: ids the book holds
(opening, open, closing) are answered from memory, the others by that commit.

When a change commits, the book first calls the ``acknowledge`` callbacks of the
requests waiting for it (the sessions queue their acks there, synchronously), then tells
its listeners (the profit engine, which then asks for a tick): so on the connection that
opened a position, the ack is always written before the position's first profit frame.

Validation, each refusal a ``RequestError`` with a stable code:

- ``unknown_instrument``: the instrument is not one the server carries;
- ``invalid_position``: an id that is empty, longer than ``MAX_POSITION_ID_CHARS`` or
  not printable; a side other than ``buy``/``sell``; a quantity or price that is not an
  exact positive decimal (at most 12 decimal places, below ``MAX_AMOUNT``);
- ``duplicate_position``: the account already has (or had: closed positions keep their
  id, archived ones too) a position with this id that is not the same order; for an id
  not in the book this comes from the commit (nothing is written). Sending the very same
  open again is a retry and gets the same acknowledgement (``opened_ts`` of the first);
- ``unknown_position``: closing an id the account has no open position under (another
  account's positions are simply not there: ids are per account);
- ``position_pending``: closing a position whose open is not acknowledged yet;
- ``too_many_positions``: the account holds ``max_positions_per_account`` already;
- ``storage_unavailable``: the database is degraded (refused at once, nothing queued) or
  did not confirm the write within ``ack_timeout`` (then the change stays queued and is
  written when the database answers; the same request sent again waits for it).

States: ``OPENING`` (id reserved, open not committed) -> ``OPEN`` -> ``CLOSING`` (close
not committed; still open for profit) -> gone; an open whose id the commit finds taken
goes from ``OPENING`` straight to gone. Everything runs on the event loop; the only await
is the commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from book.exceptions import PrecisionError
from book.fixed import SCALE, parse_plain_decimal
from publish.catalog import InstrumentCatalog
from publish.exceptions import RequestError
from publish.position import Position, PositionSide
from publish.protocol import ErrorCode
from publish.storage.flusher import InsertOutcome, StorageHealth
from publish.storage.positions import PositionStore

MAX_POSITION_ID_CHARS = 64
MAX_AMOUNT = 10**18 * SCALE
"""Quantities and prices must be below 10^18 (exclusive), in fixed-point units."""

Acknowledge = Callable[[Position], None]
"""Called synchronously with the position as stored, the moment its change committed."""


class PositionListener(Protocol):
    """Told of positions as their changes commit (the profit engine)."""

    def position_opened(self, position: Position) -> None: ...

    def position_closed(self, position: Position) -> None: ...


class PositionState(StrEnum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


@dataclass(slots=True)
class _Entry:
    position: Position
    """The open position as stored (the closed one once its close committed)."""
    state: PositionState
    settled: asyncio.Future[RequestError | None]
    """Resolves when the change in progress (open or close) is decided: ``None`` once
    committed, the refusal if it never will be. Shared by every request waiting on it."""
    acks: list[Acknowledge] = field(default_factory=list)
    """The waiting requests' callbacks, called when the change in progress commits."""


class PositionBook:
    """Open positions by ``(account, id)``; see the module docstring.

    ``open``/``close`` cost O(1) plus their one await, the commit of the flush window
    (which also checks a new id, in its own transaction). ``clock`` stamps ``opened_ts`` and
    ``closed_ts`` (ns since the epoch). ``catalog`` says which instruments exist.
    """

    def __init__(
        self,
        catalog: InstrumentCatalog,
        store: PositionStore,
        *,
        ack_timeout: float = 5.0,
        max_positions_per_account: int = 10_000,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if ack_timeout <= 0 or max_positions_per_account < 1:
            raise ValueError("ack_timeout must be positive and max_positions_per_account >= 1")
        self._catalog = catalog
        self._store = store
        self._ack_timeout = ack_timeout
        self._max_per_account = max_positions_per_account
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._per_account: dict[str, int] = {}
        self._listeners: list[PositionListener] = []

    def add_listener(self, listener: PositionListener) -> None:
        """``listener`` hears of every open position from now on, those already open
        first (replayed at once, oldest first)."""
        self._listeners.append(listener)
        for entry in self._entries.values():
            if entry.state is not PositionState.OPENING:
                listener.position_opened(entry.position)

    async def load(self) -> int:
        """Take the open positions kept by the store as open (on start); how many."""
        positions = await self._store.load_open()
        self._restore(positions)
        return len(positions)

    def positions(self, account: str) -> list[Position]:
        """The account's acknowledged open positions (closing ones included), oldest first.
        O(all positions): for tests and tools, not the hot path."""
        return [
            entry.position
            for (owner, _), entry in self._entries.items()
            if owner == account and entry.state is not PositionState.OPENING
        ]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def accounts(self) -> int:
        """Accounts holding at least one position (open, opening or closing)."""
        return len(self._per_account)

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
        """Validate, store and return the open position (as stored) once committed;
        ``acknowledge`` is called with it at the commit, before any listener hears."""
        position = self._validate(account, position_id, instrument, side, qty, price)
        key = (account, position_id)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.state is PositionState.CLOSING or not entry.position.same_order(position):
                raise _duplicate(position_id)
            await self._settle(entry, self._deadline(), acknowledge)
            return entry.position
        self._refuse_if_degraded()
        if self._per_account.get(account, 0) >= self._max_per_account:
            raise RequestError(
                ErrorCode.TOO_MANY_POSITIONS,
                f"an account may hold at most {self._max_per_account} open positions",
            )
        settled: asyncio.Future[RequestError | None] = asyncio.get_running_loop().create_future()
        entry = self._entries[key] = _Entry(position, PositionState.OPENING, settled)
        self._per_account[account] = self._per_account.get(account, 0) + 1
        self._store.insert(position).add_done_callback(lambda stored: self._opened(stored, entry))
        await self._settle(entry, self._deadline(), acknowledge)
        return position

    async def close(
        self, account: str, position_id: str, *, acknowledge: Acknowledge | None = None
    ) -> Position:
        """Close the account's open position ``position_id``; the closed position (as
        stored) once committed (``acknowledge``: as for ``open``)."""
        entry = self._entries.get((account, position_id))
        if entry is None:
            raise RequestError(ErrorCode.UNKNOWN_POSITION, f"no open position {position_id[:64]!r}")
        if entry.state is PositionState.OPENING:
            raise RequestError(
                ErrorCode.POSITION_PENDING,
                f"position {position_id[:64]!r} is not acknowledged yet",
            )
        if entry.state is PositionState.OPEN:
            self._refuse_if_degraded()
            closed = entry.position.closed_at(self._clock())
            entry.state = PositionState.CLOSING
            entry.settled = asyncio.get_running_loop().create_future()
            self._store.write(closed).add_done_callback(
                lambda written: self._closed(written, entry, closed)
            )
        await self._settle(entry, self._deadline(), acknowledge)
        return entry.position  # the closed position, set when the close committed

    # -- internals ----------------------------------------------------------------------

    def _restore(self, positions: Iterable[Position]) -> None:
        loop = asyncio.get_running_loop()
        for position in positions:
            key = (position.account, position.id)
            if key in self._entries:
                raise ValueError(
                    f"position {position.id!r} of {position.account!r} is already in the book"
                )
            settled: asyncio.Future[RequestError | None] = loop.create_future()
            settled.set_result(None)
            self._entries[key] = _Entry(position, PositionState.OPEN, settled)
            self._per_account[position.account] = self._per_account.get(position.account, 0) + 1
            for listener in self._listeners:
                listener.position_opened(position)

    def _validate(
        self, account: str, position_id: str, instrument: str, side: str, qty: str, price: str
    ) -> Position:
        if (
            not position_id
            or len(position_id) > MAX_POSITION_ID_CHARS
            or not position_id.isprintable()
        ):
            raise RequestError(
                ErrorCode.INVALID_POSITION,
                f"position id must be 1 to {MAX_POSITION_ID_CHARS} printable characters",
            )
        if self._catalog.unknown_instruments((instrument,)):
            raise RequestError(
                ErrorCode.UNKNOWN_INSTRUMENT, f"unknown instrument {instrument[:64]!r}"
            )
        try:
            position_side = PositionSide(side)
        except ValueError:
            raise RequestError(
                ErrorCode.INVALID_POSITION, f"side must be buy or sell, not {side[:16]!r}"
            ) from None
        return Position(
            id=position_id,
            account=account,
            instrument=instrument,
            side=position_side,
            qty=_amount("qty", qty),
            entry_price=_amount("price", price),
            opened_ts=self._clock(),
        )

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._ack_timeout

    def _refuse_if_degraded(self) -> None:
        if self._store.health is StorageHealth.DEGRADED:
            raise _unavailable("the database is not accepting writes; nothing was changed")

    async def _settle(
        self, entry: _Entry, deadline: float, acknowledge: Acknowledge | None
    ) -> None:
        """Wait (until ``deadline``) for the change in progress on ``entry`` to commit;
        ``acknowledge`` is called at the commit (at once if it already happened)."""
        settled = entry.settled
        if not settled.done():
            if acknowledge is not None:
                entry.acks.append(acknowledge)
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(settled)
            except TimeoutError:
                raise _unavailable(
                    f"the database did not confirm within {self._ack_timeout:g}s; the change "
                    "is queued and will be stored when it answers: send the same request "
                    "again for its acknowledgement"
                ) from None
            finally:
                if acknowledge in entry.acks:  # not committed: this request gets no ack
                    entry.acks.remove(acknowledge)
        elif settled.result() is None and acknowledge is not None:
            acknowledge(entry.position)
        refusal = settled.result()
        if refusal is not None:
            raise RequestError(refusal.code, refusal.message)

    def _committed(self, entry: _Entry) -> None:
        """The change in progress on ``entry`` is durable: its waiters ack first."""
        entry.settled.set_result(None)
        acks, entry.acks = entry.acks, []
        for acknowledge in acks:
            acknowledge(entry.position)

    def _opened(self, stored: asyncio.Future[InsertOutcome], entry: _Entry) -> None:
        if stored.cancelled():  # the flusher went away: nothing was confirmed
            return
        if stored.result() is InsertOutcome.ID_TAKEN:
            self._forget(entry, _duplicate(entry.position.id))
            return
        entry.state = PositionState.OPEN
        self._committed(entry)
        for listener in self._listeners:
            listener.position_opened(entry.position)

    def _closed(self, written: asyncio.Future[None], entry: _Entry, closed: Position) -> None:
        if written.cancelled():
            return
        del self._entries[closed.account, closed.id]
        self._count_down(closed.account)
        entry.position = closed
        self._committed(entry)
        for listener in self._listeners:
            listener.position_closed(closed)

    def _forget(self, entry: _Entry, refusal: RequestError) -> None:
        """Release an id reserved by an open that was not written: its waiters get
        ``refusal``."""
        position = entry.position
        del self._entries[position.account, position.id]
        self._count_down(position.account)
        entry.acks.clear()
        entry.settled.set_result(refusal)

    def _count_down(self, account: str) -> None:
        left = self._per_account[account] - 1
        if left:
            self._per_account[account] = left
        else:
            del self._per_account[account]


def _amount(name: str, text: str) -> int:
    try:
        value = parse_plain_decimal(text)
    except PrecisionError:
        raise RequestError(
            ErrorCode.INVALID_POSITION, f"{name} has more than 12 decimal places"
        ) from None
    except ValueError:
        raise RequestError(
            ErrorCode.INVALID_POSITION,
            f"{name} must be a decimal number (digits, optionally a point and digits), "
            f"not {text[:32]!r}",
        ) from None
    if not 0 < value < MAX_AMOUNT:
        raise RequestError(ErrorCode.INVALID_POSITION, f"{name} must be positive and below 10^18")
    return value


def _duplicate(position_id: str) -> RequestError:
    return RequestError(
        ErrorCode.DUPLICATE_POSITION,
        f"position id {position_id[:64]!r} is already used by this account",
    )


def _unavailable(detail: str) -> RequestError:
    return RequestError(ErrorCode.STORAGE_UNAVAILABLE, f"storage unavailable: {detail}")
