"""The PostgreSQL COPY variants store the same values: each payload written to its own
table reads back as the rows it was built from (exact amounts, NULL sides kept)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg

from bench.pgformats import BUILDERS, VARIANTS, create_table, measure_variants, write
from bench.storage import RowMaker, sample_quotes
from book.fixed import from_decimal
from publish.storage.rows import BboRow
from tests.postgres import PG_DSN, fresh_schema


def _rows() -> list[BboRow]:
    rows = RowMaker(sample_quotes(8)).rows(8)
    rows.append(BboRow(1, 2, "venue\\x", "SYM", 99, None, None, 10**12 // 3, 1))
    return rows[:3] + rows[-1:]


def test_every_variant_reads_back_as_the_rows_it_was_built_from() -> None:
    async def scenario() -> None:
        rows = _rows()
        async with fresh_schema() as schema:
            conn = await asyncpg.connect(PG_DSN)
            try:
                await conn.execute(f'CREATE SCHEMA "{schema}"')
                for variant in VARIANTS:
                    for statement in create_table(schema, variant):
                        await conn.execute(statement)
                    await write(conn, schema, variant, BUILDERS[variant](rows))
                    stored = await conn.fetch(
                        f'SELECT * FROM "{schema}".{variant.table} ORDER BY seq'
                    )
                    amounts = [
                        tuple(
                            None
                            if value is None
                            else from_decimal(value)
                            if isinstance(value, Decimal)
                            else value
                            for value in tuple(record)[5:]
                        )
                        for record in stored
                    ]
                    assert [tuple(record)[:5] for record in stored] == [
                        (r.ts_event, r.ts_recv, r.venue, r.symbol, r.seq) for r in rows
                    ], variant
                    assert amounts == [(r.bid_px, r.bid_qty, r.ask_px, r.ask_qty) for r in rows]
            finally:
                await conn.close()

    asyncio.run(scenario())


def test_variants_run_interleaved_at_the_offered_rate() -> None:
    async def scenario() -> None:
        async with fresh_schema() as schema:
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.close()

            async def connect() -> asyncpg.Connection:
                return await asyncpg.connect(PG_DSN)

            runs = await measure_variants(
                connect,
                schema,
                RowMaker(sample_quotes()).rows,
                rate=2000,
                window_ms=5,
                seconds=0.4,
                warmup=0.05,
            )
            assert [run.variant for run in runs] == list(VARIANTS)
            for run in runs:
                assert run.batch_rows == 10
                assert run.flush.get_total_count() == run.rows // 10 > 0
                assert run.write.get_total_count() == run.build.get_total_count()
                assert run.rows_per_second > 0

    asyncio.run(scenario())
