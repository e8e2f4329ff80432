"""Built-in simulated venues: synthetic books served in real exchange wire formats.

``market`` holds the venue-neutral synthetic book; ``venue`` the ``LoopbackVenue`` base
every simulator shares (server, clients, market loop, generic faults, ``run_simulator``)
and ``faults`` the one ``Fault`` enum and its counters. One module per exchange speaks
its protocol: ``binance`` (spot and USD-M), ``okx``, ``kraken``, ``coinbase``, ``bybit``
(spot and linear); ``player`` replays a recording instead.
"""
