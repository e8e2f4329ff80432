"""OKX v5 public websocket: one order-book channel per venue (``books`` by default,
400 levels, 100 ms updates; ``books5``, ``bbo-tbt`` and, logged in, ``books-l2-tbt`` and
``books50-l2-tbt``: ``feeds.okx.channels``).

What the runner sends::

    {"op":"login","args":[{"apiKey":..,"passphrase":..,"timestamp":..,"sign":..}]}
                                           (first, when the venue has credentials: the
                                            handshake; subscribe waits for its ack)
    {"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"},
                              {"channel":"books","instId":"BTC-USDT-SWAP"}]}
    {"op":"unsubscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}   (resync, then
    {"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]})     a new snapshot)
    ping                                   (every 20 s; OKX answers pong and closes
                                            connections idle for 30 s)

Instrument ids: ``okx:BTC-USDT`` is instId ``BTC-USDT``; ``okx:BTC-USDT-PERP`` is the
perpetual swap ``BTC-USDT-SWAP``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import orjson

from feeds.okx.channels import RULES, OkxChannel, OkxCredentials, login_answer, login_frame
from feeds.okx.parser import OkxParser
from feeds.okx.sync import OkxBookSync
from feeds.symbols import SymbolMap
from feeds.sync import BookSync
from feeds.venue import Handshake, IdleProbe, VenueAdapter

PUBLIC_WS = "wss://ws.okx.com:8443"
PUBLIC_PATH = "/ws/v5/public"
_PERP = "-PERP"
_SWAP = "-SWAP"
LOGIN_TIMEOUT = 10.0
"""Seconds OKX has to acknowledge a login before the connection is given up."""


def okx_inst_id(symbol: str) -> str:
    """Canonical symbol -> OKX instId (``BTC-USDT-PERP`` -> ``BTC-USDT-SWAP``)."""
    return symbol.removesuffix(_PERP) + _SWAP if symbol.endswith(_PERP) else symbol


def okx_canonical(inst_id: str) -> str:
    """OKX instId -> canonical symbol (``BTC-USDT-SWAP`` -> ``BTC-USDT-PERP``); spot and
    dated futures (``BTC-USD-220527``) keep their instId."""
    return inst_id.removesuffix(_SWAP) + _PERP if inst_id.endswith(_SWAP) else inst_id


def okx_symbols(symbols: Iterable[str]) -> dict[str, str]:
    """``{canonical: instId}`` for a ``SymbolMap``."""
    return {symbol: okx_inst_id(symbol) for symbol in symbols}


class OkxAdapter(VenueAdapter):
    """OKX public order books; a resync resubscribes that one instrument."""

    app_ping_interval = 20.0  # OKX: send "ping" within 30 s of the last message
    idle_probe = IdleProbe.APP  # "ping" is answered with "pong"
    max_instruments_per_connection = 29  # OKX: fewer than 30 400-level channels per connection
    # OKX sends an empty update for a book quiet for ~60 s: two minutes of nothing means the
    # subscription is stuck, and it is resubscribed.
    instrument_silence_timeout = 120.0

    def __init__(
        self,
        symbols: SymbolMap,
        *,
        ws_base: str | None = None,
        channel: OkxChannel = OkxChannel.BOOKS,
        credentials: OkxCredentials | None = None,
        login_timeout: float = LOGIN_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``ws_base``: a host (``/ws/v5/public`` is appended) or a whole URL with its path
        (``wss://wspap.okx.com:8443/ws/v5/public?brokerId=9999``, OKX's demo trading).
        ``channel`` is the book channel subscribed; ``credentials`` log the connection in
        first (needed by the tick-by-tick books), and its subscribe waits up to
        ``login_timeout`` s for the login's ack; ``clock`` stamps the login (seconds)."""
        rules = RULES[channel]
        if rules.needs_login and credentials is None:
            raise ValueError(
                f"OKX channel {channel} needs API credentials (a logged-in connection)"
            )
        self.channel = channel
        self.credentials = credentials
        self.login_timeout = login_timeout
        self._clock = clock
        if rules.depth < 50:  # OKX limits the 400/50-level channels per connection
            self.max_instruments_per_connection = 200
        self.venue = symbols.venue
        self.symbols = symbols
        base = ws_base or PUBLIC_WS
        has_path = urlsplit(base).path not in ("", "/")
        self.ws_url = base if has_path else base.rstrip("/") + PUBLIC_PATH

    def stream_url(self, instruments: Sequence[str]) -> str:
        return self.ws_url

    def handshake(self) -> Handshake | None:
        """The login, when the venue has credentials (timestamped now: OKX refuses a
        timestamp older than 30 s)."""
        if self.credentials is None:
            return None
        frame = login_frame(self.credentials, str(int(self._clock())))
        return Handshake((frame,), login_answer, timeout=self.login_timeout, name="login")

    def subscribe_frames(self, instruments: Sequence[str]) -> list[str]:
        return [self._request("subscribe", instruments)]

    def resubscribe_frames(self, instrument: str) -> list[str]:
        return [
            self._request("unsubscribe", [instrument]),
            self._request("subscribe", [instrument]),
        ]

    def app_ping_frame(self) -> str | None:
        return "ping"

    def new_parser(self) -> OkxParser:
        return OkxParser(self.symbols)

    def new_sync(self, instrument: str, *, capture_depth: int) -> BookSync:
        return OkxBookSync(instrument, capture_depth=capture_depth)

    def _request(self, op: str, instruments: Sequence[str]) -> str:
        args = [
            {"channel": self.channel.value, "instId": self.symbols.venue_symbol(name)}
            for name in instruments
        ]
        return orjson.dumps({"op": op, "args": args}).decode()
