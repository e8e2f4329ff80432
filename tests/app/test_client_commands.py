"""``marketcast token`` and ``marketcast subscribe`` against a real server on loopback."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from app.auth import auth_policy
from app.cli import main
from app.commands.subscribe import render, subscribe
from app.settings import load_settings
from book.status import InstrumentState
from marketcast import decode
from publish.auth import AuthPolicy, TokenAuthority
from publish.exceptions import TokenError
from publish.protocol import Channel, ErrorCode
from tests.publish.support import BTC, ETH, running
from tests.waiting import eventually

STATUS_TIME = 1_700_000_000_123_456_000  # 22:13:20.123456 UTC


def received_at() -> int:
    return STATUS_TIME


def lines(out: io.StringIO) -> int:
    return out.getvalue().count("\n")


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "server.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "m.db"}"\n{extra}')
    return path


def test_token_is_signed_with_the_servers_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    server = auth_policy(load_settings(path))  # the server creates the secret on its start
    assert (tmp_path / "marketcast.secret").exists()
    assert main(["token", "--account", "acct-1", "--config", str(path), "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    assert server.tokens.verify(token).account == "acct-1"
    with pytest.raises(TokenError) as refused:
        TokenAuthority(b"some-other-secret-key").verify(token)
    assert refused.value.code is ErrorCode.TOKEN_INVALID


def test_token_never_creates_a_secret_the_server_does_not_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["token", "--account", "acct-1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "marketcast: no token secret at marketcast.secret: the server creates it on its first "
        "start; run this with the server's --config (or in its directory), or set "
        "[auth].secret (MARKETCAST_AUTH__SECRET)\n"
    )
    assert list(elsewhere.iterdir()) == []
    monkeypatch.setenv("MARKETCAST_AUTH__SECRET", "a-secret-from-the-environment")
    assert main(["token", "--account", "acct-1"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenAuthority(b"a-secret-from-the-environment").verify(token).account == "acct-1"
    assert list(elsewhere.iterdir()) == []


def test_token_roles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, '[auth]\nsecret = "a-configured-secret-16"\n')
    tokens = TokenAuthority(b"a-configured-secret-16")
    for flag, operator, admin in (("--operator", True, False), ("--admin", True, True)):
        assert main(["token", "--account", "ops", "--config", str(path), flag]) == 0
        claims = tokens.verify(capsys.readouterr().out.strip())
        assert (claims.operator, claims.admin) == (operator, admin)


def test_token_with_a_configured_secret_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, '[auth]\nsecret = "a-configured-secret-16"\n')
    assert main(["token", "--account", "acct-2", "--config", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenAuthority(b"a-configured-secret-16").verify(token).account == "acct-2"
    assert not (tmp_path / "marketcast.secret").exists()
    for ttl in ("0", "1e30", "inf", "nan"):
        assert main(["token", "--account", "acct-2", "--config", str(path), "--ttl", ttl]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("marketcast: ttl must be a number of seconds above 0")
        assert captured.err.count("\n") == 1


async def test_subscribe_prints_bbo_lines_then_exits_after_count() -> None:
    out, err = io.StringIO(), io.StringIO()
    async with running() as m:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.quote(BTC, ("43000.1", "0.5"), ("43000.2", "1.25"))
        task = asyncio.create_task(
            subscribe(m.server.url, Channel.BBO, [BTC, ETH], count=3, out=out, err=err)
        )
        # Each quote once the line before it is printed: the server sends the latest BBO
        # of an instrument, so a quote published before the previous one went out would
        # replace it (and the command would wait for a third line for ever).
        await eventually(lambda: lines(out) == 1, "BTC's BBO printed on subscribing")
        m.feed.quote(ETH, None, ("3", "4"))
        await eventually(lambda: lines(out) == 2, "ETH's BBO printed")
        m.feed.quote(BTC, ("43000.15", "0.00000001"), ("43000.2", "1.25"))
        async with asyncio.timeout(30):
            assert await task == 0
    assert out.getvalue() == (
        "00:00:00.000001  binance:BTC-USDT         #1        43000.1 x 0.5  |  43000.2 x 1.25\n"
        "00:00:00.000001  binance:ETH-USDT         #1        -  |  3 x 4\n"
        "00:00:00.000002  binance:BTC-USDT         #2        43000.15 x 0.00000001  |  "
        "43000.2 x 1.25\n"
    )
    assert err.getvalue() == "marketcast: subscribed to bbo binance:BTC-USDT binance:ETH-USDT\n"


async def test_subscribe_prints_a_book_ladder_and_status_lines() -> None:
    book, status, err = io.StringIO(), io.StringIO(), io.StringIO()
    async with running() as m:
        m.feed.status(BTC, InstrumentState.LIVE)
        m.feed.levels(BTC, [("100", "1"), ("99.5", "22.25")], [("101", "1.5"), ("102", "3")])
        assert (
            await subscribe(m.server.url, Channel.BOOK, [BTC], depth=3, count=1, out=book, err=err)
            == 0
        )
        assert (
            await subscribe(
                m.server.url, Channel.STATUS, [], count=2, out=status, err=err, clock=received_at
            )
            == 0
        )
    assert book.getvalue() == (
        "00:00:00.000001  binance:BTC-USDT         #1        book depth 3\n"
        "        1   100 | 101  1.5\n"
        "    22.25  99.5 | 102  3\n"
    )
    assert status.getvalue() == (
        "22:13:20.123456  binance:BTC-USDT         live (synced)\n"
        "22:13:20.123456  binance:ETH-USDT         syncing (starting)\n"
    )
    assert err.getvalue() == (
        "marketcast: subscribed to book depth 3 binance:BTC-USDT\n"
        "marketcast: subscribed to status\n"
    )


async def test_subscribe_with_a_token_and_every_way_it_fails() -> None:
    tokens = TokenAuthority(b"0123456789abcdef0123")
    policy = AuthPolicy(tokens=tokens, market_data_requires_auth=True)
    async with running(auth=policy) as m:
        runs = {}
        for name, token in (("none", None), ("ok", tokens.issue("acct-1", ttl=60))):
            out, err = io.StringIO(), io.StringIO()
            status = await subscribe(
                m.server.url,
                Channel.STATUS,
                [],
                token=token,
                count=1,
                out=out,
                err=err,
                clock=received_at,
            )
            runs[name] = (status, out.getvalue(), err.getvalue())
        out, err = io.StringIO(), io.StringIO()
        refused = await subscribe(m.server.url, Channel.BBO, ["x:Y-Z"], out=out, err=err)
        url = m.server.url
    assert runs == {
        "none": (1, "", "marketcast: auth_required: this server requires auth for market data\n"),
        "ok": (
            0,
            "22:13:20.123456  binance:BTC-USDT         syncing (starting)\n",
            "marketcast: authenticated as acct-1\nmarketcast: subscribed to status\n",
        ),
    }
    assert refused == 1
    assert (
        err.getvalue() == "marketcast: auth_required: this server requires auth for market data\n"
    )
    err = io.StringIO()
    assert await subscribe(url, Channel.STATUS, [], err=err) == 1  # the server is gone
    assert err.getvalue().startswith(f"marketcast: cannot connect to {url}: ")


async def test_subscribe_reconnects_when_the_server_closes_the_connection() -> None:
    err = io.StringIO()
    async with running() as m:
        url = m.server.url
        task = asyncio.create_task(subscribe(url, Channel.STATUS, [], err=err))
        await eventually(lambda: m.fanout.subscriptions() > 0, "subscribed")
    await eventually(lambda: "reconnecting" in err.getvalue(), "the loss reported")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert err.getvalue() == (
        "marketcast: subscribed to status\n"
        "marketcast: disconnected (closed by the server: 1001), reconnecting\n"
    )


def test_profit_messages_render_one_line_each() -> None:
    common = {"account": "acct-1", "position_id": "p-1", "instrument": BTC, "ts_send": 1_000}
    messages = [
        {
            "type": "profit",
            **common,
            "side": "buy",
            "qty": "0.5",
            "entry": "43000.1",
            "mark": "43010",
            "pnl": "4.95",
            "seq": 3,
        },
        {
            "type": "profit",
            **common,
            "side": "sell",
            "qty": "1",
            "entry": "2",
            "mark": None,
            "pnl": None,
            "seq": 1,
        },
        {
            "type": "profit_total",
            "account": "acct-1",
            "pnl": "4.95",
            "positions": 2,
            "unmarked": 1,
            "ts_send": 1_000,
        },
        {"type": "profit_closed", **common, "closed_ts": 5},
        {"type": "future", "x": [1]},
    ]
    assert [render(decode(message), STATUS_TIME) for message in messages] == [
        "00:00:00.000001  acct-1 p-1          binance:BTC-USDT         buy 0.5 @ 43000.1  "
        "mark 43010  pnl 4.95",
        "00:00:00.000001  acct-1 p-1          binance:BTC-USDT         sell 1 @ 2  mark -  pnl -",
        "00:00:00.000001  acct-1 total pnl 4.95 over 2 positions (1 unmarked)",
        "00:00:00.000001  acct-1 p-1          binance:BTC-USDT         closed",
        '22:13:20.123456  {"type":"future","x":[1]}',
    ]
