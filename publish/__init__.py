"""Readers of the books: the websocket/HTTP server, the fan-out engine, positions and
profit, storage and metrics.

They read what ingest wrote to the seam (``book.registry.BookRegistry``: latest
snapshots, states, NBBO, incidents, and ``book.counters.FeedCounters`` as plain data)
and never import ``feeds`` or ``app``: whether the books come from runners in the same
process or over a bus is not their concern.
"""
