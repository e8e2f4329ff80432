"""``value_class``: a frozen dataclass for the type checker, plain assignments at run time.
Equality, hash, ``replace`` and slots as a frozen dataclass's; mypy refuses assigning a
field of any class made with it (checked by running mypy on a snippet)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from publish.value import value_class


@value_class
class Pair:
    left: str
    right: int = 0


@value_class(kw_only=True)
class Named:
    name: str


def test_equal_and_hashed_by_fields_like_a_frozen_dataclass() -> None:
    assert Pair("a", 1) == Pair("a", 1) != Pair("a", 2)
    assert hash(Pair("a", 1)) == hash(Pair("a", 1))
    assert {Pair("a", 1), Pair("a", 1)} == {Pair("a", 1)}
    assert repr(Pair("a")) == "Pair(left='a', right=0)"
    assert dataclasses.replace(Pair("a", 1), right=2) == Pair("a", 2)
    assert [field.name for field in dataclasses.fields(Pair)] == ["left", "right"]
    assert not hasattr(Pair("a"), "__dict__")  # slotted


def test_keyword_only_when_asked() -> None:
    assert Named(name="x").name == "x"
    with pytest.raises(TypeError):
        Named("x")  # type: ignore[call-arg]


def test_the_type_checker_refuses_an_assignment_to_a_field(tmp_path: Path) -> None:
    snippet = tmp_path / "assigns.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from publish.position import Position, PositionSide
            from publish.value import value_class

            @value_class
            class Pair:
                left: str

            Pair("a").left = "b"
            position = Position(
                id="p", account="a", instrument="i", side=PositionSide.BUY, qty=1,
                entry_price=2, opened_ts=3,
            )
            position.qty = 5
            """
        )
    )
    out, _, status = mypy_api.run(
        [str(snippet), "--no-incremental", "--follow-imports=silent", "--no-error-summary"]
    )
    assert status == 1
    assert 'Property "left" defined in "Pair" is read-only' in out
    assert 'Property "qty" defined in "Position" is read-only' in out
