"""The bus: ingest and edges over NATS, another implementation of ``book.sink.FeedSink``.

An ingest node tees what its feeds write (``bus.ingest.BusPublisher``, itself a
``FeedSink``) into its local registry and onto NATS, one conflated message per
instrument per flush: on the next loop iteration after a quiet spell, at most one flush
a millisecond while the feeds are busy. An edge node has no feeds: ``bus.edge.BusEdge``
reads the bus and writes into a local ``BookRegistry``, which the unchanged ``publish/``
layer serves. ``bus.follower`` is the edge's sans-I/O core (which ingest to follow,
sequence checks, repair, staleness, failover); ``bus.codec`` the versioned binary
encoding; ``bus.subjects`` the subject names; ``bus.link`` the NATS connection;
``bus.natsserver`` a local nats-server for one machine and for tests. This package
imports ``book`` only.
"""
