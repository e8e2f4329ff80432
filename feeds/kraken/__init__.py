"""Kraken spot: websocket v2 ``book`` (and v1 recordings) with CRC32 book checksums.

``parser`` (frames -> events), ``sync`` (apply, truncate to depth, verify the checksum),
``checksum`` (the CRC32 and per-pair precision), ``adapter`` (``KrakenAdapter``).
"""
