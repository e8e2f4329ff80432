"""The binary ``COPY`` of BBO rows, read back by a real PostgreSQL: every amount is the
very ``NUMERIC`` (value and text) the text format stored."""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator

import asyncpg
import pytest

from book.fixed import SCALE, format_fixed, parse_fixed
from publish.storage import pgcopy
from publish.storage.pgcopy import COLUMNS, HEADER, TRAILER, BboCopyEncoder
from publish.storage.rows import BboRow
from tests.postgres import PG_DSN, fresh_schema

pytestmark = pytest.mark.timeout(30)

EDGES = [
    0,
    1,
    9_999,
    10_000,
    10_001,
    SCALE - 1,
    SCALE,
    SCALE + 1,
    10_000 * SCALE,
    10_000 * SCALE + 1,
    parse_fixed("61737.63"),
    parse_fixed("0.00001234"),
    parse_fixed("0.00000001"),
    parse_fixed("100000000.0001"),
    parse_fixed("123456789012345678901234567890.123456789012"),
    2**63 - 1,
    2**64 + 7,
    10**40 + 10**12,
]


def amounts() -> list[int]:
    generator = random.Random(20261207)
    drawn = [generator.randrange(10 ** generator.randrange(1, 32)) for _ in range(2_000)] + [
        generator.randrange(1_000) * 10 ** generator.randrange(0, 20) for _ in range(500)
    ]
    values = EDGES + drawn
    return values + [-value for value in values if value]


async def copied_back(rows: list[BboRow], encoder: BboCopyEncoder) -> list[tuple[object, ...]]:
    """``rows`` copied in by the encoder's stream; the table read back as text, by seq."""
    async with fresh_schema() as schema:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(
                f'CREATE TABLE "{schema}".bbo (ts_event BIGINT NOT NULL, ts_recv BIGINT NOT'
                " NULL, venue TEXT NOT NULL, symbol TEXT NOT NULL, seq BIGINT NOT NULL,"
                " bid_px NUMERIC, bid_qty NUMERIC, ask_px NUMERIC, ask_qty NUMERIC)"
            )

            async def stream() -> AsyncIterator[bytes]:
                yield HEADER + encoder.rows(rows[: len(rows) // 2])
                yield encoder.rows(rows[len(rows) // 2 :]) + TRAILER

            await conn.copy_to_table(
                "bbo",
                schema_name=schema,
                columns=COLUMNS,
                source=stream(),
                format="binary",
            )
            records = await conn.fetch(
                "SELECT ts_event, ts_recv, venue, symbol, seq, bid_px::text, bid_qty::text,"
                f' ask_px::text, ask_qty::text FROM "{schema}".bbo ORDER BY seq'
            )
        finally:
            await conn.close()
    return [tuple(record) for record in records]


def as_text(value: int | None) -> str | None:
    return None if value is None else format_fixed(value)


async def test_every_amount_reads_back_as_the_text_format_wrote_it() -> None:
    values = amounts()
    rows = [
        BboRow(
            1_700_000_000_000_000_000 + seq,
            -seq,
            "kraken\t\\x",
            "ÉTH-USD\n",
            seq,
            value,
            None if seq % 7 == 0 else values[-1 - seq],
            None if seq % 5 == 0 else values[(seq * 31) % len(values)],
            0,
        )
        for seq, value in enumerate(values)
    ]
    encoder = BboCopyEncoder()

    stored = await copied_back(rows, encoder)

    assert stored == [
        (
            row.ts_event,
            row.ts_recv,
            row.venue,
            row.symbol,
            row.seq,
            as_text(row.bid_px),
            as_text(row.bid_qty),
            as_text(row.ask_px),
            as_text(row.ask_qty),
        )
        for row in rows
    ]


def test_the_numeric_form_spelled_out() -> None:
    # 61737.63: groups 6 | 1737 . 6300 (weight 1: the first group counts 10000^1),
    # two decimals shown.
    assert pgcopy.numeric(parse_fixed("61737.63")) == bytes.fromhex("0003000100000002000606c9189c")
    # -0.00001234: the group before 1234 is zero and left out (weight -2), sign negative.
    assert pgcopy.numeric(-parse_fixed("0.00001234")) == bytes.fromhex("0001fffe4000000804d2")
    assert pgcopy.numeric(0) == bytes.fromhex("0000000000000000")


def test_memos_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgcopy, "_MEMO_LIMIT", 10)
    monkeypatch.setattr(pgcopy, "_TEXT_MEMO_LIMIT", 3)
    encoder = BboCopyEncoder()
    fields = [encoder.amount(value) for value in range(25)]
    texts = [encoder.text(f"venue-{n}") for n in range(25)]

    assert len(encoder._amounts) <= 10
    assert len(encoder._texts) <= 3
    # Whatever the memo holds, the same value is the same field.
    assert [encoder.amount(value) for value in range(25)] == fields
    assert [encoder.text(f"venue-{n}") for n in range(25)] == texts


def test_a_value_past_64_bits_in_an_integer_column_is_an_error() -> None:
    with pytest.raises(struct.error):
        BboCopyEncoder().rows([BboRow(2**63, 0, "v", "s", 1, None, None, None, None)])
