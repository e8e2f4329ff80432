"""Order books and the seam between ingest and its readers.

Exact fixed-point prices, the mutable ``L2Book`` and its immutable ``BookSnapshot``s,
instrument ids, and what ingest hands downstream: the ``FeedSink`` protocol
(``book.sink``), incidents, instrument states and feed counters as plain data. The
``BookRegistry`` is the in-process sink and what readers look up and listen to; the
consolidated best bid/ask is computed there. ``book`` imports none of ``feeds``,
``publish`` or ``app``.
"""
