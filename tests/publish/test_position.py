"""``Position`` is kept out of the cycle collector's sight, which is safe only while no
field can hold an object that refers back to it."""

from __future__ import annotations

import gc
import sys
import typing
from dataclasses import fields

from publish.position import Position, PositionSide

ATOMIC_FIELD_TYPES = {str, int, int | None, PositionSide}
"""Types whose values cannot refer to a position: no cycle can pass through one."""


def a_position() -> Position:
    return Position(
        id="p-1",
        account="acct-1",
        instrument="binance:BTC-USDT",
        side=PositionSide.BUY,
        qty=5 * 10**7,
        entry_price=43_000 * 10**8,
        opened_ts=1,
    )


def test_a_position_is_a_value() -> None:
    assert a_position() == a_position() and a_position() is not a_position()
    assert hash(a_position()) == hash(a_position())
    assert a_position().closed_at(9) == a_position().closed_at(9) != a_position()
    assert a_position().closed_at(9).closed_ts == 9 and a_position().closed_ts is None


def test_a_position_is_not_tracked_by_the_cycle_collector() -> None:
    opened = a_position()
    assert not gc.is_tracked(opened)
    assert not gc.is_tracked(opened.closed_at(2))  # made through dataclasses.replace


def test_every_field_of_a_position_holds_only_values_that_cannot_refer_back_to_it() -> None:
    hints = typing.get_type_hints(Position)
    field_types = {hints[field.name] for field in fields(Position)}
    assert field_types <= ATOMIC_FIELD_TYPES, (
        "a Position field may hold a container: it could be in a reference cycle, so "
        "Position must not be untracked (see publish.untracked)"
    )
    assert all(isinstance(side.value, str) for side in PositionSide)


def test_an_untracked_position_is_freed_by_reference_counting() -> None:
    gc.collect()
    gc.disable()  # nothing but reference counting may free them
    try:
        before = sys.getallocatedblocks()
        positions = [a_position().closed_at(2) for _ in range(10_000)]
        grown = sys.getallocatedblocks() - before
        del positions
        left = sys.getallocatedblocks() - before
    finally:
        gc.enable()
    assert grown >= 10_000
    assert left < 1_000
