"""``value_class``: immutable value types that cost a plain object to build.

A ``@dataclass(frozen=True)`` sets each field in its ``__init__`` through
``object.__setattr__``: building an 8-field one took 2.7 times as long as the same
class unfrozen on the benchmark VM (1,094 against 411 ns). For the few
values made on every position op (the request, the ``Position``, its stored row) that was
a tenth of the instructions an open costs the single process (counted by callgrind,
``python -m bench opcost``: 25,000 of some 240,000).

``value_class`` makes a slotted dataclass with plain assignments in its ``__init__``,
the equality and hash of a frozen one (by fields), and tells the type checker it is
frozen (``dataclass_transform(frozen_default=True)``): mypy refuses any assignment to
a field, as for a frozen dataclass, and ``dataclasses.replace`` makes changed copies.
What it gives up is the run-time ``FrozenInstanceError`` for code the type checker does
not see. Use it only for values built on a hot path; ``@dataclass(frozen=True)`` is the
rule elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, dataclass_transform, overload

_T = TypeVar("_T")


@overload
def value_class(cls: type[_T], /) -> type[_T]: ...


@overload
def value_class(*, kw_only: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True)
def value_class(
    cls: type[_T] | None = None, /, *, kw_only: bool = False
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """``@value_class`` or ``@value_class(kw_only=True)`` on a class of annotated fields."""

    def make(cls: type[_T]) -> type[_T]:
        return dataclass(slots=True, unsafe_hash=True, kw_only=kw_only)(cls)

    return make if cls is None else make(cls)
