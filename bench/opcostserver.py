"""One order server of scenario 6b as a process of its own, for ``bench.opcost`` to run
under callgrind: ``python -m bench.opcostserver SPEC URL_FILE``.

``SPEC`` is JSON: ``kind`` (an ``OrderServerKind`` value), ``secret``, ``instruments``
(names), ``connections``, ``backend`` (``sqlite`` or ``postgres``) and, for PostgreSQL,
``pg_dsn`` and ``pg_schema``. The server is the one scenario 6 measures
(``bench.orderservers.local_order_server``), on the same loop and with the same heap
keeping (``app.heap``) as the bench's helper processes. Once it listens its URL is
written to ``URL_FILE`` (whole, by a rename); SIGTERM or SIGINT stops it and the process
exits.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson

from app.heap import HeapKeeper
from app.loop import run_until_signalled
from bench.orderservers import OrderServerKind, OrderServerSpec, local_order_server


def spec_json(spec: OrderServerSpec) -> str:
    """``spec`` as this module's ``SPEC`` argument."""
    return orjson.dumps(
        {
            "kind": spec.kind.value,
            "secret": spec.secret,
            "instruments": list(spec.instruments),
            "connections": spec.connections,
            "backend": spec.backend,
            "pg_dsn": spec.pg_dsn,
            "pg_schema": spec.pg_schema,
        }
    ).decode()


def spec_from_json(text: str) -> OrderServerSpec:
    fields = orjson.loads(text)
    return OrderServerSpec(
        kind=OrderServerKind(fields["kind"]),
        secret=str(fields["secret"]),
        instruments=tuple(str(name) for name in fields["instruments"]),
        connections=int(fields["connections"]),
        backend=str(fields["backend"]),
        pg_dsn=str(fields["pg_dsn"]),
        pg_schema=str(fields["pg_schema"]),
    )


async def serve(spec: OrderServerSpec, url_file: Path) -> None:
    server = local_order_server(spec)
    heap = HeapKeeper()
    await server.start()
    heap.start()
    reclaiming = asyncio.get_running_loop().create_task(heap.run())
    partial = url_file.with_name(url_file.name + ".partial")
    partial.write_text(server.url)
    os.replace(partial, url_file)
    try:
        await asyncio.Event().wait()  # until a signal cancels this task
    finally:
        reclaiming.cancel()
        heap.stop()
        await server.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.opcostserver SPEC URL_FILE", file=sys.stderr)
        return 2
    return run_until_signalled(serve(spec_from_json(argv[0]), Path(argv[1])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
