"""What the runner needs to know about a venue: URLs, subscribe frames, parser, sync rules."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from feeds.events import BookSnapshotEvent, FeedEvent
from feeds.symbols import SymbolMap
from feeds.sync import BookSync


class IdleProbe(StrEnum):
    """How the runner makes a quiet but healthy connection say something."""

    WEBSOCKET = "websocket"
    """A websocket ping; its pong counts as hearing from the venue."""
    APP = "app"
    """The venue's application ping (``app_ping_frame``); it answers with a frame."""
    NONE = "none"
    """Nothing: the venue's own heartbeats keep a healthy connection talking."""


@dataclass(frozen=True, slots=True)
class HandshakeAnswer:
    """The venue's answer to a handshake: ``accepted``, or refused with ``code`` and a
    ``detail`` fit for a log line (never a secret)."""

    accepted: bool
    code: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a connection must do before it subscribes (OKX's ``login``): send
    ``frames``, then read frames until ``answer`` returns one (``None``: not the answer
    yet), within ``timeout`` seconds. Sans-I/O: the runner does the sending and reading."""

    frames: tuple[str, ...]
    answer: Callable[[str | bytes], HandshakeAnswer | None]
    timeout: float = 10.0
    name: str = "handshake"
    """What logs call it (``login``)."""


class FrameParser(Protocol):
    """Turns the frames of ONE connection into events (sans-I/O).

    Whatever a venue numbers per connection (Coinbase's ``sequence_num``) lives in the
    parser, so two connections open at once (a rotation's old and standby ones) never
    share it: each connection's session makes its own (``VenueAdapter.new_parser``).
    """

    def parse(self, frame: str | bytes) -> list[FeedEvent]: ...


class VenueAdapter(ABC):
    """One venue's protocol, minus all I/O (the runner does the I/O).

    An adapter is shared by every connection of a runner, so it keeps no state of its
    own per connection: that is in the parser and the book syncs each connection's
    session makes (``new_parser``, ``new_sync``).

    ``rest_snapshots`` venues (Binance) sync a book from an HTTP snapshot bridged
    with buffered stream events; the others get snapshots in-band and resync an
    instrument by resubscribing it.
    """

    venue: str
    symbols: SymbolMap
    rest_snapshots: bool = False
    #: Seconds between application-level pings (0 = rely on websocket ping frames).
    app_ping_interval: float = 0.0
    #: Nothing at all heard (no frame, no pong) for this long: the connection is dead,
    #: its instruments go stale at once and it is replaced. A connection quiet for half
    #: of it is probed first (``idle_probe``), so only a dead one stays silent.
    silence_timeout: float = 4.0
    idle_probe: IdleProbe = IdleProbe.WEBSOCKET
    #: A connection older than this is replaced (make-before-break); 0 = never.
    max_connection_age: float = 0.0
    #: A live instrument silent for much longer than its own update rate makes usual is
    #: stale and resynced (``feeds.silence``): never sooner than ``instrument_silence_floor``
    #: and never later than ``instrument_silence_timeout`` (0 = no upper bound: a quiet
    #: instrument is not a dead one).
    learn_instrument_silence: bool = True
    instrument_silence_floor: float = 3.0
    instrument_silence_timeout: float = 0.0
    #: An instrument not back in sync this long after a resync began is resynced again.
    resync_timeout: float = 30.0
    #: REST weight of one snapshot request, and the venue's budget per minute and IP
    #: (Binance request-weight accounting; 0 = no budget).
    snapshot_weight: float = 1.0
    rest_weight_per_minute: float = 0.0
    #: Instruments one connection may carry (0 = no limit). Coinbase uses 1 so that a
    #: per-connection sequence gap resyncs one instrument; Binance allows 1024 streams.
    max_instruments_per_connection: int = 0

    @abstractmethod
    def stream_url(self, instruments: Sequence[str]) -> str: ...

    def handshake(self) -> Handshake | None:
        """What to do before ``subscribe_frames`` on each new connection (``None``: no
        handshake, subscribe at once). Built per connection (a login is timestamped)."""
        return None

    def subscribe_frames(self, instruments: Sequence[str]) -> list[str]:
        """Text frames to send right after connecting (none when the URL subscribes)."""
        return []

    def resubscribe_frames(self, instrument: str) -> list[str]:
        """Frames that make the venue send a fresh snapshot of one instrument."""
        return []

    def app_ping_frame(self) -> str | None:
        return None

    @abstractmethod
    def new_parser(self) -> FrameParser:
        """A parser for one new connection (its per-connection state starts afresh)."""

    @abstractmethod
    def new_sync(self, instrument: str, *, capture_depth: int) -> BookSync: ...

    def snapshot_url(self, instrument: str) -> str:
        raise NotImplementedError(f"{self.venue} does not take REST snapshots")

    def parse_snapshot(self, instrument: str, body: bytes | str) -> BookSnapshotEvent:
        raise NotImplementedError(f"{self.venue} does not take REST snapshots")

    def snapshot_instrument(self, url: str) -> str | None:
        """Which instrument a recorded REST snapshot URL was for (replay)."""
        return None
