"""The bench's PostgreSQL: whether it answers, and dropping the schemas a run made."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


def postgres_reachable(dsn: str) -> str | None:
    """``None`` when ``dsn`` answers, else why not."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install '.[postgres]')"

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (TimeoutError, OSError) as exc:
        return f"cannot reach {dsn}: {str(exc)[:200]}"
    return None


async def drop_schemas(dsn: str, schemas: Sequence[str]) -> None:
    """Drop ``schemas`` (and everything in them) where they exist."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
