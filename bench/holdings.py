"""How the bench spreads positions over accounts and instruments, and what the spread
looks like: the profit scenario's server (``bench.servers``) and a positions shard
(``bench.shards``) open the same book.

Position ``i`` of ``P`` belongs to account ``a = i mod A`` and is that account's
``r = i div A``-th position; it is on instrument ``(r + a) mod I``, long when ``r`` is
even and short when it is odd. So each account goes round the instruments from an
offset of its own, and every instrument is held by accounts at every offset. With
10,000 positions, 100 accounts and 50 instruments, each account holds 2 positions on
each of the 50 instruments and every BBO change touches all 100 accounts; with 100,000,
1,000 and 100, one position on each of the 100 and all 1,000 accounts. Why: a real book
spreads an account over many instruments, so one change touches many accounts with a
few positions each, a batch of messages per account: the expensive case. (Instrument
``i mod I`` instead would give every account a single instrument whenever ``I``
divides ``A``, and a change only ``A / I`` accounts with big batches.)

Every prefix of the positions is spread the same way (the profit search opens or closes
the newest between steps), and the totals are exact: ``P`` positions over ``A``
accounts (all of them once ``P >= A``) and ``I`` instruments (all of them once
``P >= I``). Each account is half long, half short (to within one position); when ``I``
is even, the accounts holding an instrument alternate long and short (``r``'s parity
follows the account's).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Holding:
    """Where one position of the bench's book sits (indices into the bench's lists)."""

    account: int
    instrument: int
    long: bool


def holding(i: int, *, accounts: int, instruments: int) -> Holding:
    """Position ``i``'s account, instrument and side (module docstring). O(1)."""
    account, turn = i % accounts, i // accounts
    return Holding(account, (turn + account) % instruments, turn % 2 == 0)


@dataclass(frozen=True, slots=True)
class Spread:
    """How a set of positions is spread, counted from the positions themselves. Each
    count is a (fewest, most) pair: equal when the spread is even."""

    instruments_per_account: tuple[int, int]
    """Distinct instruments an account holds positions on (over accounts with any)."""
    accounts_per_instrument: tuple[int, int]
    """Distinct accounts holding an instrument (over instruments held): the accounts one
    BBO change of it touches when every account is watched."""

    @classmethod
    def of(cls, positions: Iterable[tuple[Hashable, Hashable]]) -> Spread:
        """From ``(account, instrument)`` pairs, one per position. O(positions)."""
        by_account: defaultdict[Hashable, set[Hashable]] = defaultdict(set)
        by_instrument: defaultdict[Hashable, set[Hashable]] = defaultdict(set)
        for account, instrument in positions:
            by_account[account].add(instrument)
            by_instrument[instrument].add(account)
        return cls(_range(by_account.values()), _range(by_instrument.values()))

    @classmethod
    def placed(cls, positions: int, *, accounts: int, instruments: int) -> Spread:
        """The spread of the first ``positions`` as ``holding`` places them. O(positions)."""
        places = (holding(i, accounts=accounts, instruments=instruments) for i in range(positions))
        return cls.of((place.account, place.instrument) for place in places)

    def describe(self) -> str:
        """``each account holds positions on N instruments; one BBO change touches M
        accounts`` (a range ``lo-hi`` where the counts differ)."""
        return (
            f"each account holds positions on {range_text(self.instruments_per_account)} "
            f"instruments; one BBO change touches {range_text(self.accounts_per_instrument)} "
            "accounts"
        )


def _range(groups: Iterable[set[Hashable]]) -> tuple[int, int]:
    sizes = [len(group) for group in groups]
    return (min(sizes), max(sizes)) if sizes else (0, 0)


def range_text(counts: tuple[int, int]) -> str:
    """A (fewest, most) pair as ``"50"`` when equal, else ``"25-26"``."""
    fewest, most = counts
    return f"{fewest:,}" if fewest == most else f"{fewest:,}-{most:,}"
