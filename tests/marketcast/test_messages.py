"""Sans-I/O parts of the client: decoding wire objects, the inbox, the backoff."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from itertools import islice
from types import MappingProxyType

import pytest

from marketcast import (
    Backoff,
    Bbo,
    Book,
    Disconnected,
    Level,
    Metrics,
    Nbbo,
    Profit,
    ProfitClosed,
    ProfitTotal,
    ProtocolError,
    Reconnected,
    Status,
    UnknownMessage,
    decode,
)
from marketcast.inbox import Inbox

BTC = "binance:BTC-USDT"
TS = 1_795_300_703_594_000_000


def wire_bbo(seq: int, bid: str | None = "61799.59") -> dict[str, object]:
    return {
        "type": "bbo",
        "instrument": BTC,
        "seq": seq,
        "bid": bid,
        "bid_qty": None if bid is None else "0.30978",
        "ask": "61800.02",
        "ask_qty": "0.00000001",
        "ts_event": TS,
        "ts_recv": TS + 172_015,
        "ts_send": TS + 301_221,
    }


def typed_bbo(seq: int, bid: str | None = "61799.59") -> Bbo:
    return Bbo(
        BTC,
        seq,
        None if bid is None else Decimal(bid),
        None if bid is None else Decimal("0.30978"),
        Decimal("61800.02"),
        Decimal("0.00000001"),
        TS,
        TS + 172_015,
        TS + 301_221,
    )


def test_every_server_message_decodes_to_its_exact_typed_value() -> None:
    account = {"account": "acct-1", "position_id": "p-1", "instrument": BTC}
    wire: list[dict[str, object]] = [
        wire_bbo(412),
        wire_bbo(413, bid=None),
        {
            "type": "book",
            "instrument": BTC,
            "seq": 7,
            "depth": 2,
            "bids": [["100", "1"], ["99.5", "22.25"]],
            "asks": [["101", "1.5"]],
            "ts_event": 1,
            "ts_recv": 2,
            "ts_send": 3,
        },
        {
            "type": "nbbo",
            "symbol": "BTC-USDT",
            "seq": 77,
            "bid": "61799.59",
            "bid_qty": "0.3",
            "bid_venue": "binance",
            "ask": None,
            "ask_qty": None,
            "ask_venue": None,
            "ts_event": 1,
            "ts_recv": 2,
            "ts_send": 3,
            "a_field_of_a_newer_server": True,
        },
        {"type": "status", "instrument": BTC, "state": "stale", "reason": "gap: 1 -> 3"},
        {
            "type": "profit",
            **account,
            "side": "buy",
            "qty": "0.5",
            "entry": "43000.1",
            "mark": "43010",
            "pnl": "4.95",
            "seq": 3,
            "ts_send": 9,
        },
        {
            "type": "profit_total",
            "account": "acct-1",
            "pnl": "-0.000000000001",
            "positions": 2,
            "unmarked": 1,
            "ts_send": 9,
        },
        {"type": "profit_closed", **account, "closed_ts": 8, "ts_send": 9},
        {"type": "metrics", "clients": 3, "venues": {"binance": {}}, "ts_send": 9},
        {"type": "trade", "price": "1"},
    ]
    assert [decode(obj) for obj in wire] == [
        typed_bbo(412),
        typed_bbo(413, bid=None),
        Book(
            BTC,
            7,
            2,
            (Level(Decimal("100"), Decimal("1")), Level(Decimal("99.5"), Decimal("22.25"))),
            (Level(Decimal("101"), Decimal("1.5")),),
            1,
            2,
            3,
        ),
        Nbbo(
            "BTC-USDT",
            77,
            Decimal("61799.59"),
            Decimal("0.3"),
            "binance",
            None,
            None,
            None,
            1,
            2,
            3,
        ),
        Status(BTC, "stale", "gap: 1 -> 3"),
        Profit(
            "acct-1",
            "p-1",
            BTC,
            "buy",
            Decimal("0.5"),
            Decimal("43000.1"),
            Decimal("43010"),
            Decimal("4.95"),
            3,
            9,
        ),
        ProfitTotal("acct-1", Decimal("-0.000000000001"), 2, 1, 9),
        ProfitClosed("acct-1", "p-1", BTC, 8, 9),
        Metrics(MappingProxyType({"clients": 3, "venues": {"binance": {}}}), 9),
        UnknownMessage("trade", MappingProxyType({"type": "trade", "price": "1"})),
    ]


@pytest.mark.parametrize(
    "obj",
    [
        {"no": "type"},
        {**wire_bbo(1), "seq": "1"},
        {**wire_bbo(1), "bid": 61799.59},  # a float: exactness already lost
        {**wire_bbo(1), "ask": "not a number"},
        {key: value for key, value in wire_bbo(1).items() if key != "ts_recv"},
    ],
)
def test_a_malformed_message_is_a_protocol_error(obj: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        decode(obj)


def test_messages_are_immutable() -> None:
    message = typed_bbo(1)
    with pytest.raises(AttributeError):
        message.seq = 2  # type: ignore[misc]


def test_the_inbox_keeps_the_latest_per_key_and_never_an_older_seq() -> None:
    inbox = Inbox()
    eth = Bbo("binance:ETH-USDT", 1, None, None, None, None, 1, 2, 3)
    stale = Status(BTC, "stale", "gap")
    lost, back = Disconnected("connection lost", 5), Reconnected("ws://x/ws", 2, 6)
    assert inbox.put(typed_bbo(5))
    assert inbox.put(eth)
    assert inbox.put(stale)
    assert inbox.put(typed_bbo(6))  # replaces seq 5 and moves behind the status
    assert not inbox.put(typed_bbo(4))  # older than one accepted
    assert inbox.put(lost)
    assert inbox.put(back)
    assert inbox.put(typed_bbo(6))  # the same version again (e.g. resent on subscribe)
    assert [inbox.pop() for _ in range(len(inbox))] == [eth, stale, lost, back, typed_bbo(6)]
    assert inbox.pop() is None
    assert not inbox.put(typed_bbo(5))  # also after it was consumed


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, factor=2.0)
    assert list(islice(backoff.delays(lambda: 1.0), 6)) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert list(islice(backoff.delays(lambda: 0.25), 3)) == [0.125, 0.25, 0.5]
    with pytest.raises(ValueError):
        Backoff(initial=2.0, maximum=1.0)


def test_importing_the_client_imports_none_of_the_server() -> None:
    code = (
        "import sys, marketcast\n"
        "server = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'app', 'book', 'feeds', 'publish', 'bench'})\n"
        "print(server)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout == "[]\n"
