"""Ingest: exchange feeds in, books out through the one seam, ``book.sink.FeedSink``.

Sans-I/O venue parsers (frames in, normalized events out), per-instrument sync state
machines (the single writer of each ``L2Book``), the ``FeedSession`` that holds one
connection's books and decides what every event means (publish, stale, resync), the
``FeedRunner`` that does the I/O around it, replay of recorded traffic through the same
session, and the built-in venue simulators.

Ingest writes snapshots, instrument states and incidents to its sink and nothing else:
it imports ``book`` but never ``publish`` or ``app``, and never reads what it wrote.
"""
