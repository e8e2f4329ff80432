"""The position book: every open position of every account, durable before acknowledged.

A position (``publish.position.Position``) is opened by ``open`` and closed by ``close``;
both return only once the store has made the change durable (the flusher's group commit:
every position of one 5 ms window shares one transaction), so an acknowledged position
survives a crash of the process and is reloaded by ``load`` on start. The book reaches
storage through one ``PositionStore`` (insert a new position if its id is free, write a
change, load the open ones). Whether an id is free is decided inside the commit that
stores the open, so an open costs no storage round trip before it: ids the book holds
(opening, open, closing) are answered from memory, the others by that commit.

When a change commits, the book first acknowledges the requests waiting for it (their
``PositionReply``; the sessions queue their acks there, synchronously), then tells its
listeners (the profit engine, which then asks for a tick): so on the connection that
opened a position, the ack is always written before the position's first profit frame.

A request is a call, not a task: ``submit_open``/``submit_close`` answer what they can at
once (every refusal but a timeout, a retry of a committed open) and otherwise keep the
request's reply with the change in progress until it commits, is refused, or the
request's ``ack_timeout`` passes. The timeouts of all requests share one timer: they end
in the order they began (one ``ack_timeout`` each), so one deque ordered by deadline and
a timer for its head replace a timeout and a shielded wait per request. ``open``/
``close`` are the same ops awaited (a future per request), for callers that run a task
per request anyway (tests).

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

States: opening (id reserved, open not committed) -> open -> closing (close not
committed; still open for profit) -> gone; an open whose id the commit finds taken goes
from opening straight to gone. An open position is kept as its ``Position`` alone; a
change in progress (opening, closing) as a ``_Change`` holding the replies waiting for
it, replaced by the position (or removed) when it is decided. So a position costs the
collector one tracked object in the book once its open committed, however it was
requested. Everything runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from book.exceptions import PrecisionError
from book.fixed import SCALE, parse_plain_decimal
from publish.catalog import InstrumentCatalog
from publish.exceptions import RequestError
from publish.position import Position, PositionSide
from publish.protocol import ErrorCode
from publish.storage.flusher import BatchedCommit, InsertOutcome, StorageHealth
from publish.storage.positions import PositionStore

logger = logging.getLogger(__name__)

MAX_POSITION_ID_CHARS = 64
MAX_AMOUNT = 10**18 * SCALE
"""Quantities and prices must be below 10^18 (exclusive), in fixed-point units."""

_SIDES = {side.value: side for side in PositionSide}
"""Side text -> side: a dict hit where ``PositionSide(side)`` is a Python-level call."""

Acknowledge = Callable[[Position], None]
"""Called synchronously with the position as stored, the moment its change committed."""


class PositionReply(Protocol):
    """Where the answer to one position op goes: exactly one of the two is called, once,
    synchronously (at once, or on the event loop when the change is decided or the
    request's ``ack_timeout`` passed)."""

    def acknowledge(self, position: Position) -> None:
        """The change committed: ``position`` as stored (the closed one for a close)."""
        ...

    def refuse(self, refusal: RequestError) -> None:
        """The op is refused (a fresh ``RequestError`` per request, without request id)."""
        ...


class PositionListener(Protocol):
    """Told of positions as their changes commit (the profit engine)."""

    def position_opened(self, position: Position) -> None: ...

    def position_closed(self, position: Position) -> None: ...


@dataclass(slots=True, eq=False)
class _Change(BatchedCommit):
    """A change in progress on a position: its open (``closed`` None) or its close.

    It is its own row's ``Commit`` in the store: the flusher resolves it when the row's
    batch commits, and it tells its book at once, in the flusher's turn of the loop (no
    future, no loop callback, no closure per op); a batch's changes together, in one
    call (``commit_batch``)."""

    book: PositionBook
    position: Position
    """The position being opened, or the open one being closed."""
    closed: Position | None = None
    """For a close, the position as it is stored closed."""
    replies: list[PositionReply] = field(default_factory=list)
    """The requests waiting for the change (the first one and its retries), answered when
    it is decided; a request whose ``ack_timeout`` passed is taken out (refused)."""

    @property
    def closing(self) -> bool:
        return self.closed is not None

    @classmethod
    def commit_batch(cls, commits: Sequence[_Change], results: Sequence[object]) -> None:
        """The store committed these changes, in row order (an open: with what became of
        its row, ``InsertOutcome``). O(changes)."""
        book = commits[0].book
        if all(change.book is book for change in commits):
            book._committed(commits, results)
            return
        for change, outcome in zip(commits, results, strict=True):  # books sharing a store
            change.book._committed([change], [outcome])


_Waiting = tuple[float, _Change, PositionReply]
"""A request's deadline (``time.monotonic()``), the change it waits for and its reply. While it is
in ``PositionBook._waiting`` its reply is one of the change's ``replies`` until the
change is decided (then they are ``[]`` for good: a decided change takes no request)
or the request times out (then it leaves at once): so the change's ``replies`` being
empty says the request was answered, whatever a reply's ``__eq__`` says."""


class PositionBook:
    """Open positions by ``(account, id)``; see the module docstring.

    ``submit_open``/``submit_close`` cost O(1) (plus the commit of the flush window, which
    also checks a new id in its own transaction, and one ``call_at`` per ``ack_timeout``
    for every request's timeout). ``clock`` stamps ``opened_ts`` and ``closed_ts`` (ns
    since the epoch). ``catalog`` says which instruments exist.
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
        self._entries: dict[tuple[str, str], Position | _Change] = {}
        """Open positions as such; ids with a change in progress as its ``_Change``."""
        self._per_account: dict[str, int] = {}
        self._listeners: list[PositionListener] = []
        self._waiting: deque[_Waiting] = deque()
        """Requests waiting for a change, oldest (so soonest deadline) first; answered
        ones leave from the front as soon as nothing older waits."""
        self._timer: asyncio.TimerHandle | None = None
        """Armed for the deadline of the front of ``_waiting`` (or an earlier one)."""

    def add_listener(self, listener: PositionListener) -> None:
        """``listener`` hears of every open position from now on, those already open
        first (replayed at once, oldest first)."""
        self._listeners.append(listener)
        for entry in self._entries.values():
            position = _acknowledged(entry)
            if position is not None:
                listener.position_opened(position)

    async def load(self) -> int:
        """Take the open positions kept by the store as open (on start); how many."""
        positions = await self._store.load_open()
        self._restore(positions)
        return len(positions)

    def positions(self, account: str) -> list[Position]:
        """The account's acknowledged open positions (closing ones included), oldest first.
        O(all positions): for tests and tools, not the hot path."""
        acknowledged = (
            _acknowledged(entry) for (owner, _), entry in self._entries.items() if owner == account
        )
        return [position for position in acknowledged if position is not None]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def accounts(self) -> int:
        """Accounts holding at least one position (open, opening or closing)."""
        return len(self._per_account)

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
        """Validate and store the position; ``reply`` is acknowledged with it (as stored)
        once committed, before any listener hears, or refused. The very same open sent
        again gets the same position (at once, when it committed already). O(1)."""
        try:
            position = self._validate(account, position_id, instrument, side, qty, price)
            key = (account, position_id)
            entry = self._entries.get(key)
            if entry is None:
                self._refuse_if_degraded()
                if self._per_account.get(account, 0) >= self._max_per_account:
                    raise RequestError(
                        ErrorCode.TOO_MANY_POSITIONS,
                        f"an account may hold at most {self._max_per_account} open positions",
                    )
                change = self._entries[key] = _Change(self, position)
                self._per_account[account] = self._per_account.get(account, 0) + 1
                self._store.insert(position, change)
                self._wait(change, reply)
                return
            if isinstance(entry, _Change):
                if entry.closing or not entry.position.same_order(position):
                    raise _duplicate(position_id)
                self._wait(entry, reply)
                return
            if not entry.same_order(position):
                raise _duplicate(position_id)
        except RequestError as refusal:
            reply.refuse(refusal)
            return
        reply.acknowledge(entry)  # a retry of a committed open

    def submit_close(self, account: str, position_id: str, *, reply: PositionReply) -> None:
        """Close the account's open position ``position_id``; ``reply`` is acknowledged
        with the closed position (as stored) once committed, or refused. O(1)."""
        key = (account, position_id)
        entry = self._entries.get(key)
        try:
            if entry is None:
                raise RequestError(
                    ErrorCode.UNKNOWN_POSITION, f"no open position {position_id[:64]!r}"
                )
            if isinstance(entry, _Change):
                if not entry.closing:
                    raise RequestError(
                        ErrorCode.POSITION_PENDING,
                        f"position {position_id[:64]!r} is not acknowledged yet",
                    )
                self._wait(entry, reply)  # a retry of a close in progress
                return
            self._refuse_if_degraded()
        except RequestError as refusal:
            reply.refuse(refusal)
            return
        closed = entry.closed_at(self._clock())
        change = self._entries[key] = _Change(self, entry, closed)
        self._store.write(closed, change)
        self._wait(change, reply)

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
        """``submit_open`` awaited: the open position (as stored) once committed;
        ``acknowledge`` is called with it at the commit, before any listener hears (not
        once this call was cancelled). Raises the refusal."""
        reply = _AwaitedReply(acknowledge)
        self.submit_open(
            account,
            position_id=position_id,
            instrument=instrument,
            side=side,
            qty=qty,
            price=price,
            reply=reply,
        )
        return await reply.answer

    async def close(
        self, account: str, position_id: str, *, acknowledge: Acknowledge | None = None
    ) -> Position:
        """``submit_close`` awaited: the closed position (as stored) once committed
        (``acknowledge``: as for ``open``)."""
        reply = _AwaitedReply(acknowledge)
        self.submit_close(account, position_id, reply=reply)
        return await reply.answer

    def _check(self) -> None:
        """Assert every invariant (tests; between events). O(positions + waiting)."""
        counts: dict[str, int] = {}
        changes: set[int] = set()
        for (account, position_id), entry in self._entries.items():
            position = entry.position if isinstance(entry, _Change) else entry
            assert (position.account, position.id) == (account, position_id)
            assert position.is_open
            if isinstance(entry, _Change):
                changes.add(id(entry))
            counts[account] = counts.get(account, 0) + 1
        assert counts == self._per_account
        waiting = [(change, reply) for _, change, reply in self._waiting]
        deadlines = [deadline for deadline, _, _ in self._waiting]
        assert deadlines == sorted(deadlines), "requests wait in the order they began"
        waiting_replies = {id(reply) for _, reply in waiting}
        for change, reply in waiting:
            held = [id(held) for held in change.replies]
            if id(change) in changes:
                assert id(reply) in held, "a request waits for a change without its reply"
            else:
                assert not held, "a decided change holds replies"
        for entry in self._entries.values():
            if isinstance(entry, _Change):
                assert all(id(reply) in waiting_replies for reply in entry.replies)
        assert not waiting or waiting[0][0].replies, "an answered request at the front"
        assert self._timer is not None or not waiting, "requests wait with no timer armed"

    # -- internals ----------------------------------------------------------------------

    def _restore(self, positions: Iterable[Position]) -> None:
        for position in positions:
            key = (position.account, position.id)
            if key in self._entries:
                raise ValueError(
                    f"position {position.id!r} of {position.account!r} is already in the book"
                )
            self._entries[key] = position
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
        if not self._catalog.carries(instrument):
            raise RequestError(
                ErrorCode.UNKNOWN_INSTRUMENT, f"unknown instrument {instrument[:64]!r}"
            )
        position_side = _SIDES.get(side)
        if position_side is None:
            raise RequestError(
                ErrorCode.INVALID_POSITION, f"side must be buy or sell, not {side[:16]!r}"
            )
        # Positional, in the field order (id, account, instrument, side, qty, entry
        # price, opened): keywords through a class call cost a dict per open.
        return Position(
            position_id,
            account,
            instrument,
            position_side,
            _amount("qty", qty),
            _amount("price", price),
            self._clock(),
        )

    def _refuse_if_degraded(self) -> None:
        if self._store.health is StorageHealth.DEGRADED:
            raise _unavailable("the database is not accepting writes; nothing was changed")

    def _wait(self, change: _Change, reply: PositionReply) -> None:
        """``reply`` waits for ``change``, at most ``ack_timeout`` from now. O(1).

        Deadlines are ``time.monotonic()``, the clock asyncio's own loop keeps (uvloop's
        is the same clock in whole milliseconds): the loop itself is looked up only to
        arm the timer, since ``asyncio.get_running_loop`` costs a ``getpid`` system call
        each time."""
        change.replies.append(reply)
        deadline = time.monotonic() + self._ack_timeout
        self._waiting.append((deadline, change, reply))
        if self._timer is None:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            deadline - time.monotonic(), self._expire, deadline
        )

    def _expire(self, armed: float) -> None:
        """The timer: refuse the requests whose deadline passed (the change stays queued,
        a retry waits for it again), then arm the timer for the next deadline.
        O(requests ended since the last call)."""
        self._timer = None
        now = max(time.monotonic(), armed)  # a timer may run a little before its time
        waiting = self._waiting
        while waiting:
            deadline, change, reply = waiting[0]
            replies = change.replies
            if replies:  # not answered (see _Waiting)
                if deadline > now:
                    break
                del replies[next(i for i, held in enumerate(replies) if held is reply)]
                reply.refuse(
                    _unavailable(
                        f"the database did not confirm within {self._ack_timeout:g}s; the "
                        "change is queued and will be stored when it answers: send the same "
                        "request again for its acknowledgement"
                    )
                )
            waiting.popleft()
        if waiting:
            self._arm(waiting[0][0])

    def _committed(self, changes: Sequence[_Change], outcomes: Sequence[object]) -> None:
        """Changes of this book committed, in row order (``_Change.commit_batch``): each
        open is recorded, or forgotten when the commit found its id taken, each close
        removed; the requests waiting for each are answered, then the listeners told,
        change by change. A failure while telling one change (a reply's or a listener's
        bug) is logged and the others are still told. Then the answered requests leave
        the timeouts' queue. O(changes + requests answered).

        The usual change, an open written, is handled in this loop itself: a batch of
        opens costs no call per open but its replies' and listeners'."""
        entries = self._entries
        listeners = self._listeners
        for change, outcome in zip(changes, outcomes, strict=True):
            replies, change.replies = change.replies, []
            try:
                if change.closed is not None:
                    self._closed(change.closed, replies)
                    continue
                position = change.position
                if outcome is InsertOutcome.ID_TAKEN:
                    self._forget(position, replies)
                    continue
                entries[position.account, position.id] = position
                for reply in replies:
                    reply.acknowledge(position)
                for listener in listeners:
                    listener.position_opened(position)
            except Exception:  # as the flusher does for one commit: the others go on
                logger.exception("telling of a committed position change failed")
        waiting = self._waiting
        while waiting and not waiting[0][1].replies:  # answered (see _Waiting)
            waiting.popleft()

    def _closed(self, closed: Position, replies: list[PositionReply]) -> None:
        """A close committed: ``closed`` is gone; ``replies`` are its requests."""
        del self._entries[closed.account, closed.id]
        self._count_down(closed.account)
        for reply in replies:
            reply.acknowledge(closed)
        for listener in self._listeners:
            listener.position_closed(closed)

    def _forget(self, position: Position, replies: list[PositionReply]) -> None:
        """Release an id reserved by an open that was not written (the commit found the id
        taken): its requests, ``replies``, are refused as duplicates."""
        del self._entries[position.account, position.id]
        self._count_down(position.account)
        for reply in replies:
            reply.refuse(_duplicate(position.id))

    def _count_down(self, account: str) -> None:
        left = self._per_account[account] - 1
        if left:
            self._per_account[account] = left
        else:
            del self._per_account[account]


class _AwaitedReply:
    """The reply of an awaited op (``PositionBook.open``/``close``): a future."""

    __slots__ = ("answer", "_acknowledge")

    def __init__(self, acknowledge: Acknowledge | None) -> None:
        self.answer: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._acknowledge = acknowledge

    def acknowledge(self, position: Position) -> None:
        if self.answer.done():  # the awaiting call was cancelled: its request gets no ack
            return
        if self._acknowledge is not None:
            self._acknowledge(position)
        self.answer.set_result(position)

    def refuse(self, refusal: RequestError) -> None:
        if not self.answer.done():
            self.answer.set_exception(refusal)


def _acknowledged(entry: Position | _Change) -> Position | None:
    """The acknowledged open position of an entry (``None`` while its open is pending)."""
    if isinstance(entry, _Change):
        return entry.position if entry.closing else None
    return entry


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
