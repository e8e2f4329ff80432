"""The edge's ``profit`` channel source: watches on demand, relays frames byte for byte,
keeps the current state for later subscribers, and a closed position leaves it."""

from __future__ import annotations

from collections.abc import Mapping

from publish.channels import Tick, Topic
from publish.fanout import Fanout
from publish.profit_relay import ProfitRelay
from publish.protocol import Channel
from tests.publish.support import new_registry

OPEN = b'{"type":"profit","position_id":"p-1","pnl":"1"}'
TOTAL = b'{"type":"profit_total","pnl":"1"}'
CLOSED = b'{"type":"profit_closed","account":"a","position_id":"p-1"}'


class Feed:
    def __init__(self) -> None:
        self.watched: list[str] = []

    def watch(self, account: str) -> None:
        self.watched.append(account)

    def unwatch(self, account: str) -> None:
        self.watched.remove(account)


class Inbox:
    def __init__(self) -> None:
        self.got: dict[Topic, bytes] = {}

    def offer(self, key: Topic, message: bytes) -> None:
        self.got[key] = message

    def offer_all(self, messages: Mapping[Topic, bytes]) -> None:
        self.got.update(messages)


def test_an_account_is_watched_from_its_first_subscriber_to_its_last() -> None:
    feed = Feed()
    relay = ProfitRelay(Fanout(new_registry()), feed)
    first, second = Inbox(), Inbox()
    relay.add(first, "a")
    relay.add(second, "a")
    assert feed.watched == ["a"]
    relay.remove(first, "a")
    assert feed.watched == ["a"]
    relay.remove(second, "a")
    assert feed.watched == [] and relay.watched == []


async def test_frames_are_relayed_and_kept_for_later_subscribers_until_closed() -> None:
    relay = ProfitRelay(Fanout(new_registry()), Feed())
    first = Inbox()
    relay.add(first, "a")
    relay.receive("b", [("p-9", OPEN)], whole=False)  # nobody watches b here: dropped
    relay.receive("a", [("p-1", OPEN), ("", TOTAL)], whole=True)
    assert relay.publish(Tick(1, measured=False)) is False
    assert first.got == {(Channel.PROFIT, "p-1"): OPEN, (Channel.PROFIT, ""): TOTAL}
    later = Inbox()
    relay.add(later, "a")
    relay.send_current(later, "a")
    assert later.got == first.got
    relay.receive("a", [("p-1", CLOSED)], whole=False)
    relay.publish(Tick(2, measured=False))
    assert first.got[Channel.PROFIT, "p-1"] == CLOSED
    last = Inbox()
    relay.add(last, "a")
    relay.send_current(last, "a")
    assert last.got == {(Channel.PROFIT, ""): TOTAL}
