"""book.fixed: exact decimal text <-> fixed-point ints at 10**-12."""

from __future__ import annotations

import re
import sys
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation

import pytest
from hypothesis import given
from hypothesis import strategies as st

from book.exceptions import BookError, PrecisionError
from book.fixed import (
    SCALE,
    SCALE_DIGITS,
    FixedMemo,
    fixed_from_number,
    format_fixed,
    format_fixed_places,
    from_decimal,
    parse_fixed,
    parse_plain_decimal,
    to_decimal,
)

EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def exact_fixed(value: Decimal) -> int:
    """The fixed-point int of a Decimal that fits the scale, computed without rounding."""
    scaled = value.scaleb(SCALE_DIGITS, EXACT)
    assert scaled == scaled.to_integral_value()
    return int(scaled)


# Decimals with at most 12 places: any coefficient, exponents from -12 up, so that
# str() gives plain ("0.00123"), exponent ("1.2E+7", "1E-7") and negative forms.
decimals_12 = st.builds(
    lambda coefficient, exponent: Decimal(coefficient).scaleb(exponent, EXACT),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.integers(min_value=-SCALE_DIGITS, max_value=30),
) | st.decimals(allow_nan=False, allow_infinity=False, places=SCALE_DIGITS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("61737.63000000", 61_737_630_000_000_000),
        ("0.35", 350_000_000_000),
        ("-1.5", -1_500_000_000_000),
        ("+1.5", 1_500_000_000_000),
        ("5", 5 * SCALE),
        ("5.", 5 * SCALE),
        (".5", 500_000_000_000),
        ("-.5", -500_000_000_000),
        ("0", 0),
        ("-0", 0),
        ("0.000000000001", 1),
        ("0.000000000000000", 0),
        ("1.000000000000000", SCALE),
        ("0.0000000000010", 1),
        ("123456789.123456789012", 123_456_789_123_456_789_012),
        ("100000000000000000000.5", 100_000_000_000_000_000_000_500_000_000_000),
        (" 1.5", 1_500_000_000_000),
    ],
)
def test_parse_plain_decimals(text: str, expected: int) -> None:
    assert parse_fixed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-08", 10_000),
        ("1E-8", 10_000),
        ("1.5e3", 1500 * SCALE),
        ("-2.5E-4", -250_000_000),
        ("1e-12", 1),
        ("1E+2", 100 * SCALE),
        ("0E-30", 0),
        ("0e999999999", 0),
        # 30 significant digits: more than the default Decimal context keeps.
        ("1.23456789012345678901234567890E+40", int("123456789012345678901234567890" + "0" * 23)),
    ],
)
def test_parse_exponent_forms(text: str, expected: int) -> None:
    assert parse_fixed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "0.0000000000001",
        "1.1234567890123",
        "-0.0000000000009",
        "0.0000000000010000001",
        "1e-13",
        "1.5E-12",
        "-7E-20",
    ],
)
def test_more_than_12_places_is_a_precision_error(text: str) -> None:
    with pytest.raises(PrecisionError) as caught:
        parse_fixed(text)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, BookError)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "-",
        "+",
        "-.",
        " ",
        "abc",
        "1.2.3",
        "1,5",
        "nan",
        "NaN",
        "-inf",
        "Infinity",
        "1e",
        "e5",
        "0x10",
        "1.5x",
        "--1",
        "1 .5",
        "1. 5",
        ". 5",
        ".-5",
        "1.-5",
        "1.+5",
        "1.5           0",
        ".5000000000000-",
        "1e999999",
        "1e99999999999",
    ],
)
def test_garbage_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_fixed(text)
    assert not isinstance(caught.value, PrecisionError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Characters int() takes inside the fraction must not shift the scale.
        ("1.00000000000 ", SCALE),
        ("1.5 ", 1_500_000_000_000),
        ("0.1_0", 100_000_000_000),
        ("1.5_", 1_500_000_000_000),
        ("1_000.5", 1_000_500_000_000_000),
    ],
)
def test_whitespace_and_underscores_read_as_decimal_reads_them(text: str, expected: int) -> None:
    assert exact_fixed(Decimal(text)) == expected
    assert parse_fixed(text) == expected


def decimal_contract(text: str) -> int | type[ValueError]:
    """What parse_fixed must return for ``text``, derived from Decimal alone."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return ValueError
    if not value.is_finite():
        return ValueError
    if value and value.adjusted() + 1 + SCALE_DIGITS > sys.int_info.default_max_str_digits:
        return ValueError
    scaled = value.scaleb(SCALE_DIGITS, EXACT)
    if scaled != scaled.to_integral_value():
        return PrecisionError
    return int(scaled)


@given(st.text(alphabet="0123456789.-+eE_ ", max_size=18))
def test_parse_agrees_with_decimal_on_any_text(text: str) -> None:
    expected = decimal_contract(text)
    if isinstance(expected, int):
        assert parse_fixed(text) == expected
    else:
        with pytest.raises(ValueError) as caught:
            parse_fixed(text)
        assert isinstance(caught.value, PrecisionError) == (expected is PrecisionError)


@given(decimals_12)
def test_parse_format_round_trip_is_exact(value: Decimal) -> None:
    fixed = exact_fixed(value)
    assert parse_fixed(str(value)) == fixed
    assert parse_fixed(f"{value:f}") == fixed
    assert from_decimal(value) == fixed
    assert to_decimal(fixed) == value
    text = format_fixed(fixed)
    assert text == ("0" if not value else f"{value.normalize(EXACT):f}")
    assert parse_fixed(text) == fixed


@given(st.integers())
def test_format_is_the_shortest_exact_text(value: int) -> None:
    text = format_fixed(value)
    assert parse_fixed(text) == value
    whole, _, frac = text.lstrip("-").partition(".")
    assert whole == str(abs(value) // SCALE)
    assert len(frac) <= SCALE_DIGITS
    assert not frac.endswith("0")
    assert text.startswith("-") == (value < 0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (43_000_100_000_000_000, "43000.1"),
        (10_000, "0.00000001"),
        (5 * SCALE, "5"),
        (0, "0"),
        (1, "0.000000000001"),
        (-1, "-0.000000000001"),
        (-1_500_000_000_000, "-1.5"),
        (-5 * SCALE, "-5"),
    ],
)
def test_format_fixed(value: int, text: str) -> None:
    assert format_fixed(value) == text


@pytest.mark.parametrize(
    ("value", "places", "text"),
    [
        (1_234_500_000_000, 3, "1.234"),
        (1_235_500_000_000, 3, "1.236"),
        (5 * SCALE, 2, "5.00"),
        (-1, 2, "-0.00"),
        (43_000_100_000_000_000, 0, "43000"),
        (10**40 + 1, 12, "10000000000000000000000000000.000000000001"),
    ],
)
def test_format_fixed_places_rounds_half_even(value: int, places: int, text: str) -> None:
    assert format_fixed_places(value, places) == text


def test_to_decimal_and_from_decimal() -> None:
    assert to_decimal(1) == Decimal("1E-12")
    assert to_decimal(12_345_678_901_234_567_123_456_789_012) == Decimal(
        "12345678901234567.123456789012"
    )
    assert from_decimal(Decimal("0.1")) == 100_000_000_000
    assert from_decimal(Decimal("-3")) == -3 * SCALE


@pytest.mark.parametrize(
    "value",
    ["1E-13", "12345678901234567.1234567890125", "NaN", "Infinity", "-Infinity"],
)
def test_from_decimal_rejects_what_does_not_fit(value: str) -> None:
    with pytest.raises(PrecisionError):
        from_decimal(Decimal(value))


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (29313.7, 29_313_700_000_000_000),
        (0.00123456, 1_234_560_000),
        (0.1, 100_000_000_000),
        (61737.63, 61_737_630_000_000_000),
        (1e-05, 10_000_000),
        (1e16, 10**16 * SCALE),
        (-0.5, -500_000_000_000),
        (0.0, 0),
        (5, 5 * SCALE),
        (-7, -7 * SCALE),
        ("0.35", 350_000_000_000),
    ],
)
def test_fixed_from_number(number: float | int | str, expected: int) -> None:
    assert fixed_from_number(number) == expected


@pytest.mark.parametrize("number", [True, False, float("nan"), float("inf"), float("-inf"), "x"])
def test_fixed_from_number_rejects_non_numbers(number: float | int | str) -> None:
    with pytest.raises(ValueError) as caught:
        fixed_from_number(number)
    assert not isinstance(caught.value, PrecisionError)


def test_fixed_from_number_too_many_places() -> None:
    with pytest.raises(PrecisionError):
        fixed_from_number(1e-13)


@given(
    st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1),
    st.integers(min_value=0, max_value=SCALE_DIGITS),
)
def test_float_with_15_significant_digits_is_the_venues_decimal(
    coefficient: int, places: int
) -> None:
    # A venue's decimal with <= 15 significant digits survives the JSON float exactly.
    value = Decimal(coefficient).scaleb(-places)
    assert fixed_from_number(float(value)) == exact_fixed(value)


def test_fixed_memo_returns_parse_fixed_and_stays_bounded() -> None:
    memo = FixedMemo(limit=3)
    texts = ["61737.63000000", "0.00000000", "1.5", "61737.63000000", "2", "0.00000001"]
    assert [memo.parse(text) for text in texts] == [parse_fixed(text) for text in texts]
    # The fourth distinct text emptied the memo first: never more than ``limit`` entries.
    assert memo.values == {"2": 2 * SCALE, "0.00000001": 10_000}


def test_fixed_memo_never_remembers_an_error() -> None:
    memo = FixedMemo()
    for _ in range(2):
        with pytest.raises(PrecisionError):
            memo.parse("0.0000000000001")
        with pytest.raises(ValueError):
            memo.parse("1.2.3")
    assert memo.values == {}


def test_format_memo_is_bounded_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from book import fixed

    monkeypatch.setattr(fixed, "_TEXT_MEMO_LIMIT", 100)
    fixed._TEXT_MEMO.clear()
    values = [v * 10**9 + 7 for v in range(1_000)] * 2
    texts = [fixed.format_fixed(v) for v in values]
    assert texts == [fixed._format_fixed(v) for v in values]
    assert len(fixed._TEXT_MEMO) <= 100


@given(st.integers(min_value=-(10**40), max_value=10**40) | st.integers(-(10**13), 10**13))
def test_the_formatter_behind_the_memo_agrees_with_decimal(value: int) -> None:
    from book import fixed

    expected = "0" if not value else f"{to_decimal(value).normalize(EXACT):f}"
    assert fixed._format_fixed(value) == expected


PLAIN = re.compile(r"^[0-9]+(\.[0-9]+)?$", re.ASCII)
"""The documented grammar of client amounts, written independently of book.fixed's."""


@given(
    st.text(
        alphabet=st.sampled_from(
            list("0123456789.+-eE_ \t\n")
            + ["\u0661", "\uff11", "\u0663", "\u00b2", "\u2007", "\u0966", "n", "a", "N", "I"]
        ),
        max_size=24,
    )
)
def test_client_amounts_accept_exactly_the_plain_decimal_grammar(text: str) -> None:
    if PLAIN.fullmatch(text) and not text.endswith("\n"):
        whole, _, frac = text.partition(".")
        if len(frac.rstrip("0")) > 12:
            with pytest.raises(PrecisionError):
                parse_plain_decimal(text)
        else:
            assert parse_plain_decimal(text) == exact_fixed(Decimal(text))
    else:
        with pytest.raises(ValueError):
            parse_plain_decimal(text)


@given(st.decimals(min_value=0, max_value=10**15, places=12, allow_nan=False))
def test_every_plain_decimal_parses_exactly(value: Decimal) -> None:
    text = f"{value:f}"
    assert parse_plain_decimal(text) == exact_fixed(value)


@pytest.mark.parametrize(
    "text",
    [
        "1_000",
        "\u0661\u0662",
        "\uff11",
        "+1",
        "-1",
        " 1",
        "1 ",
        "1e3",
        "1E3",
        ".5",
        "5.",
        "",
        "1.2.3",
        "0x10",
        "inf",
        "NaN",
        "1\n",
        "\u00b2",
    ],
)
def test_lax_spellings_are_not_client_amounts(text: str) -> None:
    with pytest.raises(ValueError):
        parse_plain_decimal(text)
