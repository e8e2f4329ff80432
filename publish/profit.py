"""The profit engine: mark-to-market PnL of open positions, streamed on the ``profit`` channel.

Positions come from the position book (``position_opened``/``position_closed``, called
when those changes commit); subscriptions come through the fan-out
(``{"op":"subscribe","channel":"profit","account":"acct-1"}``, allowed only for the
connection's own account). Only accounts with at least one subscriber are marked: their
positions are indexed by instrument, so a price change of an instrument costs O(its
positions of subscribed accounts) and nothing at all when there are none.

A change of an instrument's best bid or ask price (quantities do not move PnL) marks the
instrument dirty and asks the fan-out for a tick; the tick calls ``publish``, which marks
every indexed position of each dirty instrument once, at the latest prices: long
(``buy``) at the bid, ``pnl = qty * (bid - entry)``; short (``sell``) at the ask,
``pnl = qty * (entry - ask)``. Exact: integer products of fixed-point values (24
decimals), never floats. A burst of price changes between two ticks costs one mark per
position, and subscribers that are behind keep only the latest frame per position (the
session outbox key is ``(profit, position_id)``): conflated, never stale. A position
whose mark price did not change is not sent again.

Messages, for every subscriber of the account::

    {"type":"profit","account":"acct-1","position_id":"p-1","instrument":"binance:BTC-USDT",
     "side":"buy","qty":"0.5","entry":"43000.1","mark":"43010","pnl":"4.95",
     "seq":123,"ts_send":...}
    {"type":"profit_total","account":"acct-1","pnl":"4.95","positions":1,"unmarked":0,
     "ts_send":...}
    {"type":"profit_closed","account":"acct-1","position_id":"p-1",
     "instrument":"binance:BTC-USDT","closed_ts":...,"ts_send":...}

``mark``/``pnl`` are ``null`` while the position's side of the book is empty (or the book
was never live); ``seq`` is the book version the mark came from. ``profit_total`` sums
the marked positions; ``unmarked`` counts the others. On subscribe the current state of
every position and the total are sent at once. ``profit_closed`` is the last frame of a
position: it replaces any unsent ``profit`` frame of it, and nothing follows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from book.fixed import SCALE, format_fixed
from book.registry import BookRegistry
from book.snapshot import BookSnapshot
from publish.fanout import Fanout, Subscriber, Topic
from publish.protocol import Channel
from publish.storage.rows import PositionRow, PositionSide

TOTAL_KEY: Topic = (Channel.PROFIT, "")
"""Outbox key of the ``profit_total`` message (position ids are never empty)."""

_PNL_SCALE = SCALE * SCALE
_PNL_DIGITS = 24


def format_pnl(value: int) -> str:
    """A PnL (fixed point times fixed point: 10**-24 units) as the shortest exact decimal."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), _PNL_SCALE)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{_PNL_DIGITS}d}".rstrip("0")


def pnl_of(row: PositionRow, bid: int | None, ask: int | None) -> int | None:
    """The exact PnL of ``row`` at these prices (10**-24 units); ``None`` without a price
    on its side."""
    if row.side is PositionSide.BUY:
        return None if bid is None else row.qty * (bid - row.entry_px)
    return None if ask is None else row.qty * (row.entry_px - ask)


@dataclass(slots=True, eq=False)
class _Mark:
    """One open position of an account, and its last mark (when the account is watched)."""

    row: PositionRow
    key: Topic
    prefix: bytes
    """The frame up to ``"mark":``, encoded once when the position opens."""
    long: bool
    price: int | None = None
    pnl: int | None = None
    seq: int = 0


@dataclass(slots=True, eq=False)
class _Account:
    name: str
    subscribers: set[Subscriber] = field(default_factory=set)
    marks: dict[str, _Mark] = field(default_factory=dict)
    """Every open position of the account, by id."""
    total: int = 0
    """Sum of the PnL of the marked positions (watched accounts only)."""
    unmarked: int = 0
    """Positions without a PnL (watched accounts only)."""


class ProfitEngine:
    """Marks positions and publishes profit frames; see the module docstring.

    Attach it with ``fanout.add_source(Channel.PROFIT, engine)`` (done here) and
    ``book.add_listener(engine)``. ``position_opened``/``position_closed`` and
    ``subscribe``/``unsubscribe`` may also be driven directly (benchmarks, tests).
    """

    def __init__(self, registry: BookRegistry, fanout: Fanout) -> None:
        if fanout.registry is not registry:
            raise ValueError("the fanout must listen to the same registry")
        self._registry = registry
        self._fanout = fanout
        self._clock: Callable[[], int] = fanout.clock
        self._accounts: dict[str, _Account] = {}
        self._watched: dict[str, dict[_Mark, _Account]] = {}
        """instrument -> its positions of watched accounts (insertion-ordered)."""
        self._dirty: dict[str, BookSnapshot] = {}
        self._fresh: list[tuple[_Mark, _Account]] = []
        self._dirty_totals: set[_Account] = set()
        registry.on_snapshot(self._on_snapshot)
        fanout.add_source(Channel.PROFIT, self)

    @property
    def positions(self) -> int:
        """Open positions known (watched or not)."""
        return sum(len(account.marks) for account in self._accounts.values())

    @property
    def watched_positions(self) -> int:
        """Positions indexed for marking (of accounts with a subscriber)."""
        return sum(len(marks) for marks in self._watched.values())

    # -- the position book's listener -----------------------------------------------------

    def position_opened(self, row: PositionRow) -> None:
        """A position is open (committed): if its account is watched, mark it now and send
        it with the next tick. O(1)."""
        account = self._accounts.get(row.account)
        if account is None:
            account = self._accounts[row.account] = _Account(row.account)
        mark = _Mark(row, (Channel.PROFIT, row.id), _prefix(row), row.side is PositionSide.BUY)
        account.marks[row.id] = mark
        if account.subscribers:
            self._mark_live(mark)
            self._index(mark, account)
            self._fresh.append((mark, account))
            self._fanout.request_tick()

    def position_closed(self, row: PositionRow) -> None:
        """A position is closed (committed): its last frame is ``profit_closed``. O(1) plus
        one offer per subscriber of the account."""
        account = self._accounts.get(row.account)
        mark = None if account is None else account.marks.pop(row.id, None)
        if account is None or mark is None:
            return
        if account.subscribers:
            self._unindex(mark, account)
            message = _encode_closed(row, self._clock())
            for subscriber in account.subscribers:
                subscriber.offer(mark.key, message)
            self._count_encoded(1)
            self._dirty_totals.add(account)
            self._fanout.request_tick()
        elif not account.marks:
            del self._accounts[row.account]

    # -- the fan-out's channel source -------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, key: str) -> None:
        """Add a subscriber of account ``key`` (authorized by the session) and send it the
        current state. O(positions of the account)."""
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = _Account(key)
        if not account.subscribers:
            self._watch(account)
        account.subscribers.add(subscriber)
        ts_send = self._clock()
        for mark in account.marks.values():
            subscriber.offer(mark.key, _encode_mark(mark, ts_send))
        subscriber.offer(TOTAL_KEY, _encode_total(account, ts_send))
        self._count_encoded(len(account.marks) + 1)

    def unsubscribe(self, subscriber: Subscriber, key: str) -> None:
        """Remove a subscriber; the account stops being marked with its last one. O(1),
        or O(positions of the account) for the last."""
        account = self._accounts.get(key)
        if account is None or subscriber not in account.subscribers:
            return
        account.subscribers.discard(subscriber)
        if account.subscribers:
            return
        for mark in account.marks.values():
            self._unindex(mark, account)
        self._dirty_totals.discard(account)
        if not account.marks:
            del self._accounts[key]

    def publish(self, ts_send: int) -> None:
        """The tick: mark the positions of every dirty instrument and the new ones, offer
        their frames, then the changed totals. O(positions marked + accounts touched)."""
        if self._fresh:
            fresh, self._fresh = self._fresh, []
            for mark, account in fresh:
                if account.marks.get(mark.row.id) is not mark or not account.subscribers:
                    continue  # closed or unwatched before this tick
                message = _encode_mark(mark, ts_send)
                for subscriber in account.subscribers:
                    subscriber.offer(mark.key, message)
                self._dirty_totals.add(account)
                self._count_encoded(1)
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            for instrument, snapshot in dirty.items():
                marks = self._watched.get(instrument)
                if marks:
                    self._mark_instrument(marks, snapshot, ts_send)
        if self._dirty_totals:
            totals, self._dirty_totals = self._dirty_totals, set()
            for account in totals:
                message = _encode_total(account, ts_send)
                for subscriber in account.subscribers:
                    subscriber.offer(TOTAL_KEY, message)
            self._count_encoded(len(totals))

    # -- internals ----------------------------------------------------------------------------

    def _on_snapshot(self, snapshot: BookSnapshot, previous: BookSnapshot | None) -> None:
        """Mark the instrument dirty when a price moved and someone watches it. O(1)."""
        instrument = snapshot.instrument
        if instrument not in self._watched:
            return
        if previous is not None and previous.bid == snapshot.bid and previous.ask == snapshot.ask:
            return
        self._dirty[instrument] = snapshot
        self._fanout.request_tick()

    def _mark_instrument(
        self, marks: dict[_Mark, _Account], snapshot: BookSnapshot, ts_send: int
    ) -> None:
        """The hot loop: every watched position of one instrument at its latest prices."""
        bid, ask = snapshot.bid, snapshot.ask
        bid_json = _price_json(bid)
        ask_json = _price_json(ask)
        tail = b',"seq":%d,"ts_send":%d}' % (snapshot.seq, ts_send)
        dirty_totals = self._dirty_totals
        encoded = 0
        for mark, account in marks.items():
            row = mark.row
            if mark.long:
                price, price_json = bid, bid_json
            else:
                price, price_json = ask, ask_json
            if price == mark.price:
                continue  # this side did not move: same PnL
            if price is None:
                pnl = None
                pnl_json = b"null"
            else:
                pnl = row.qty * (price - row.entry_px if mark.long else row.entry_px - price)
                pnl_json = b'"%s"' % format_pnl(pnl).encode()
            self._account_pnl(account, mark.pnl, pnl)
            mark.price, mark.pnl, mark.seq = price, pnl, snapshot.seq
            message = b"".join((mark.prefix, price_json, b',"pnl":', pnl_json, tail))
            key = mark.key
            for subscriber in account.subscribers:
                subscriber.offer(key, message)
            dirty_totals.add(account)
            encoded += 1
        self._count_encoded(encoded)

    @staticmethod
    def _account_pnl(account: _Account, old: int | None, new: int | None) -> None:
        """Move one position's contribution to its account's total from ``old`` to ``new``
        (``None``: counted as unmarked)."""
        if old is None:
            account.unmarked -= 1
        else:
            account.total -= old
        if new is None:
            account.unmarked += 1
        else:
            account.total += new

    def _mark_live(self, mark: _Mark) -> None:
        """Mark a position at its book's latest live prices (unmarked if not live)."""
        snapshot = self._registry.live_snapshot(mark.row.instrument)
        if snapshot is None:
            mark.price, mark.pnl, mark.seq = None, None, 0
        else:
            mark.price = snapshot.bid if mark.long else snapshot.ask
            mark.pnl = pnl_of(mark.row, snapshot.bid, snapshot.ask)
            mark.seq = snapshot.seq

    def _watch(self, account: _Account) -> None:
        """Mark and index every position of an account that just got its first subscriber."""
        account.total, account.unmarked = 0, 0
        for mark in account.marks.values():
            self._mark_live(mark)
            self._index(mark, account)

    def _index(self, mark: _Mark, account: _Account) -> None:
        """Add a marked position to the instrument index and its PnL to the total."""
        instrument = mark.row.instrument
        marks = self._watched.get(instrument)
        if marks is None:
            marks = self._watched[instrument] = {}
        marks[mark] = account
        if mark.pnl is None:
            account.unmarked += 1
        else:
            account.total += mark.pnl

    def _unindex(self, mark: _Mark, account: _Account) -> None:
        """Take a position out of the instrument index and its PnL out of the total."""
        instrument = mark.row.instrument
        marks = self._watched[instrument]
        del marks[mark]
        if not marks:
            del self._watched[instrument]
            self._dirty.pop(instrument, None)
        if mark.pnl is None:
            account.unmarked -= 1
        else:
            account.total -= mark.pnl

    def _count_encoded(self, messages: int) -> None:
        self._fanout.counters.messages_encoded += messages


def _prefix(row: PositionRow) -> bytes:
    head = orjson.dumps(
        {
            "type": "profit",
            "account": row.account,
            "position_id": row.id,
            "instrument": row.instrument,
            "side": row.side.value,
            "qty": format_fixed(row.qty),
            "entry": format_fixed(row.entry_px),
        }
    )
    return head[:-1] + b',"mark":'


def _price_json(price: int | None) -> bytes:
    return b"null" if price is None else b'"%s"' % format_fixed(price).encode()


def _encode_mark(mark: _Mark, ts_send: int) -> bytes:
    pnl_json = b"null" if mark.pnl is None else b'"%s"' % format_pnl(mark.pnl).encode()
    return b"".join(
        (
            mark.prefix,
            _price_json(mark.price),
            b',"pnl":',
            pnl_json,
            b',"seq":%d,"ts_send":%d}' % (mark.seq, ts_send),
        )
    )


def _encode_total(account: _Account, ts_send: int) -> bytes:
    return orjson.dumps(
        {
            "type": "profit_total",
            "account": account.name,
            "pnl": format_pnl(account.total),
            "positions": len(account.marks),
            "unmarked": account.unmarked,
            "ts_send": ts_send,
        }
    )


def _encode_closed(row: PositionRow, ts_send: int) -> bytes:
    return orjson.dumps(
        {
            "type": "profit_closed",
            "account": row.account,
            "position_id": row.id,
            "instrument": row.instrument,
            "closed_ts": row.closed_ts,
            "ts_send": ts_send,
        }
    )
