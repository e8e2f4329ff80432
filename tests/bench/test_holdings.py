"""The bench's book: positions spread each account over the instruments and each
instrument over the accounts, with the documented totals and long/short mix, and the
profit server opens exactly that book."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.holdings import Holding, Spread, holding, range_text
from bench.servers import MarketcastServer, instrument_names


@pytest.mark.parametrize(
    ("positions", "accounts", "instruments"),
    [(10_000, 100, 50), (100_000, 1_000, 100)],  # issue 5's size and the full size
)
def test_each_account_holds_every_instrument_and_each_instrument_every_account(
    positions: int, accounts: int, instruments: int
) -> None:
    places = [holding(i, accounts=accounts, instruments=instruments) for i in range(positions)]

    per_account = Counter(place.account for place in places)
    per_instrument = Counter(place.instrument for place in places)
    assert per_account == dict.fromkeys(range(accounts), positions // accounts)
    assert per_instrument == dict.fromkeys(range(instruments), positions // instruments)
    # Long and short: half of each account's positions and of each instrument's.
    assert Counter((p.account, p.long) for p in places) == {
        (a, long): positions // accounts // 2 for a in range(accounts) for long in (True, False)
    }
    assert Counter((p.instrument, p.long) for p in places) == {
        (i, long): positions // instruments // 2
        for i in range(instruments)
        for long in (True, False)
    }
    spread = Spread.placed(positions, accounts=accounts, instruments=instruments)
    assert spread == Spread(
        instruments_per_account=(instruments, instruments),
        accounts_per_instrument=(accounts, accounts),
    )


def test_position_i_goes_round_the_instruments_from_its_accounts_offset() -> None:
    assert [holding(i, accounts=3, instruments=4) for i in (0, 1, 2, 3, 4, 5, 6)] == [
        Holding(0, 0, True),
        Holding(1, 1, True),
        Holding(2, 2, True),
        Holding(0, 1, False),
        Holding(1, 2, False),
        Holding(2, 3, False),
        Holding(0, 2, True),
    ]


def test_a_prefix_of_the_book_is_spread_too() -> None:
    # The profit search opens or closes the newest positions: 2,500 of the book.
    spread = Spread.placed(2_500, accounts=100, instruments=50)
    assert spread == Spread(instruments_per_account=(25, 25), accounts_per_instrument=(50, 50))
    assert spread.describe() == (
        "each account holds positions on 25 instruments; one BBO change touches 50 accounts"
    )


def test_the_spread_is_counted_from_the_positions_as_ranges() -> None:
    spread = Spread.of([("a", "X"), ("a", "Y"), ("a", "X"), ("b", "X"), ("c", "Z")])
    assert spread == Spread(instruments_per_account=(1, 2), accounts_per_instrument=(1, 2))
    assert spread.describe() == (
        "each account holds positions on 1-2 instruments; one BBO change touches 1-2 accounts"
    )
    assert range_text((1_000, 1_000)) == "1,000"
    assert Spread.of([]) == Spread((0, 0), (0, 0))


async def test_the_profit_server_opens_that_book_and_closes_the_newest_first() -> None:
    # Growing, shrinking and growing again: the open positions are always a prefix.
    server = MarketcastServer(instrument_names(50), batched=True, max_connections=10, accounts=100)
    assert server.set_positions(10_000) == 10_000
    assert server.spread() == Spread((50, 50), (100, 100))
    assert server.set_positions(2_500) == 2_500
    assert server.spread() == Spread((25, 25), (50, 50))
    assert server.set_positions(5_000) == 5_000
    assert server.spread() == Spread((50, 50), (100, 100))
