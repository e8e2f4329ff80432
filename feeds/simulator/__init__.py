"""Built-in simulated venues: synthetic books served in real exchange wire formats.

``market`` holds the venue-neutral synthetic book; one module per venue serves it on
loopback in that venue's protocol (``binance``: ``BinanceSpotSimulator``).
"""
