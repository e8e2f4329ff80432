"""One connection's (un)subscribe requests: validated, limited, then held by the fan-out.

What a connection holds lives in one place, the fan-out (its crowd); this module decides
whether a request may change it: every key known (``InstrumentCatalog``; accounts: the
connection must act for the account), the channel carried and allowed (market data may
need auth), within ``max_subscriptions``, all or nothing. The ack is queued before the
current state the fan-out then offers, so it is written first.

When the connection's token expires, ``suspend`` takes away what needed it (account
channels always, market data when the server requires auth); the next successful
``auth`` gives it back (``resume``) with the current state, as a fresh subscribe would.
"""

from __future__ import annotations

from collections.abc import Iterable

from publish.catalog import InstrumentCatalog
from publish.channels import CHANNEL_WIDE, ChannelSource, Spec, Topic
from publish.credentials import Credentials
from publish.exceptions import RequestError
from publish.fanout import Fanout
from publish.outbox import Outbox
from publish.protocol import (
    ACCOUNT_CHANNELS,
    Channel,
    ErrorCode,
    KeyField,
    Op,
    SubscriptionRequest,
    encode_ack,
    key_field,
)


class Subscriptions:
    """The subscription requests of the connection whose queue is ``outbox``."""

    def __init__(
        self,
        outbox: Outbox,
        fanout: Fanout,
        catalog: InstrumentCatalog,
        credentials: Credentials,
        *,
        max_subscriptions: int,
    ) -> None:
        self._outbox = outbox
        self._fanout = fanout
        self._catalog = catalog
        self._credentials = credentials
        self._limit = max_subscriptions
        self._suspended: list[Spec] = []

    @property
    def topics(self) -> frozenset[Topic]:
        """What the connection holds now (suspended subscriptions are not held)."""
        return frozenset(spec[:2] for spec in self._fanout.held(self._outbox))

    def serve(self, request: SubscriptionRequest) -> None:
        if request.op is Op.SUBSCRIBE:
            self._subscribe(request)
        else:
            self._unsubscribe(request)

    def _subscribe(self, request: SubscriptionRequest) -> None:
        source = self._source(request)
        self._authorize(request)
        request = source.granted(request)
        parameter = request.depth or 0
        held = {spec[:2]: spec[2] for spec in self._fanout.held(self._outbox)}
        # A key held with another parameter (a book at another depth) moves to the new one.
        new = [
            (channel, key, parameter)
            for channel, key in self._topics_of(request)
            if held.get((channel, key)) != parameter
        ]
        added = sum(1 for spec in new if spec[:2] not in held)
        holding = len(held) + len(self._suspended)
        if holding + added > self._limit:
            raise RequestError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self._limit} subscriptions per connection "
                f"({holding} held, {added} requested)",
                request.id,
            )
        self._leave([spec[:2] for spec in new if spec[:2] in held])
        self._outbox.reply(encode_ack(request))  # first: replies go before queued data
        self._fanout.subscribe(self._outbox, new)

    def _unsubscribe(self, request: SubscriptionRequest) -> None:
        self._source(request)
        topics = set(self._topics_of(request))
        self._suspended = [spec for spec in self._suspended if spec[:2] not in topics]
        self._leave(topics & self.topics)
        self._outbox.reply(encode_ack(request))

    def suspend(self) -> list[Spec]:
        """Leave every subscription that needs a current token, keeping it for ``resume``;
        the subscriptions suspended now."""
        market_data_open = self._credentials.market_data_allowed
        needing = [
            spec
            for spec in self._fanout.held(self._outbox)
            if spec[0] in ACCOUNT_CHANNELS or not market_data_open
        ]
        self._leave(spec[:2] for spec in needing)
        self._suspended += needing
        return needing

    def resume(self) -> None:
        """Hold the suspended subscriptions again (after an ``auth``) and send their
        current state; an account channel only for the account now acted for."""
        suspended, self._suspended = self._suspended, []
        account = self._credentials.account
        allowed = [
            spec
            for spec in suspended
            if (spec[1] == account if spec[0] in ACCOUNT_CHANNELS else True)
        ]
        self._fanout.subscribe(self._outbox, allowed)

    def leave_all(self) -> None:
        self._fanout.leave(self._outbox)
        self._suspended.clear()
        self._outbox.clear()

    def _leave(self, topics: Iterable[Topic]) -> None:
        """Unsubscribe ``topics`` (held) and drop what is queued for them. O(topics)."""
        topics = list(topics)
        if not topics:
            return
        self._fanout.unsubscribe(self._outbox, topics)
        whole = {channel for channel, _ in topics if not self._source_of(channel).keyed_messages}
        self._outbox.drop(topics, channels=whole)

    def _source(self, request: SubscriptionRequest) -> ChannelSource:
        source = self._fanout.source(request.channel)
        if source is None:
            raise RequestError(
                ErrorCode.UNKNOWN_CHANNEL,
                f"this server does not carry the {request.channel.value} channel",
                request.id,
            )
        return source

    def _source_of(self, channel: Channel) -> ChannelSource:
        source = self._fanout.source(channel)
        assert source is not None, "held subscriptions are of carried channels"
        return source

    def _authorize(self, request: SubscriptionRequest) -> None:
        if request.channel in ACCOUNT_CHANNELS:
            self._credentials.require(request.keys[0], request.id)
        elif not self._credentials.market_data_allowed:
            raise RequestError(
                ErrorCode.AUTH_REQUIRED, "this server requires auth for market data", request.id
            )

    def _topics_of(self, request: SubscriptionRequest) -> list[Topic]:
        """The request's topics; all-or-nothing: one unknown key fails the request."""
        channel = request.channel
        field = key_field(channel)
        if field is None:
            return [(channel, CHANNEL_WIDE)]
        if field is KeyField.INSTRUMENTS:
            unknown = self._catalog.unknown_instruments(request.keys)
            code, what = ErrorCode.UNKNOWN_INSTRUMENT, "instrument"
        elif field is KeyField.SYMBOLS:
            unknown = self._catalog.unknown_symbols(request.keys)
            code, what = ErrorCode.UNKNOWN_SYMBOL, "symbol"
        else:
            unknown = []
        if unknown:
            shown = ", ".join(key[:64] for key in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise RequestError(code, f"unknown {what}(s): {shown}{more}", request.id)
        return [(channel, key) for key in request.keys]
