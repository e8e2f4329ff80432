"""A position book over a real backend, as a process starts one: for the tests of how
position ids are kept (archived ids, ids checked in the commit)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bus.position_shard import ShardStore
from publish.catalog import RegistryCatalog
from publish.exceptions import RequestError
from publish.positions import PositionBook
from publish.protocol import ErrorCode
from publish.storage import FlushedPositionStore, PositionStore, StorageBackend, StorageFlusher
from tests.publish.storage.support import Store, running
from tests.publish.support import new_registry

NOW = 1_796_256_000 * 10**9
"""The book's clock starts here and moves by 1 per reading."""
ORDER = {"instrument": "binance:BTC-USDT", "side": "buy", "qty": "0.5", "price": "43000.1"}


@asynccontextmanager
async def book_on(
    store: Store,
    *,
    shards: int = 0,
    backend: StorageBackend | None = None,
    clock_start: int = NOW,
    **settings: Any,
) -> AsyncIterator[tuple[PositionBook, StorageBackend]]:
    """A position book over a freshly opened backend on ``store`` (or ``backend``, not
    opened yet), open positions reloaded; through a ``ShardStore`` of shard 0 when
    ``shards``. ``settings``: ``PositionBook``'s keyword arguments."""
    if backend is None:
        backend = store.make()
    await backend.open()
    flusher = StorageFlusher(backend, window_ms=1, retry_initial_ms=1, retry_max_ms=10)
    positions: PositionStore = FlushedPositionStore(flusher, backend)
    if shards:
        positions = ShardStore(positions, shard=0, shards=shards)
    book = PositionBook(
        RegistryCatalog(new_registry()),
        positions,
        clock=itertools.count(clock_start).__next__,
        **settings,
    )
    try:
        async with running(flusher):
            await book.load()
            yield book, backend
        await flusher.drain()
    finally:
        await backend.close()


async def refused_as_duplicate(
    book: PositionBook, account: str, position_id: str, qty: str = "0.5"
) -> None:
    with pytest.raises(RequestError) as refused:
        await book.open(account, position_id=position_id, **(ORDER | {"qty": qty}))
    assert refused.value.code is ErrorCode.DUPLICATE_POSITION
    assert refused.value.message == (f"position id {position_id!r} is already used by this account")
