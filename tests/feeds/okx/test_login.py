"""OKX login before subscribe: the handshake's answers, and a runner that waits for the
login ack (or gives up on a refusal, counted and logged, never with the secret)."""

from __future__ import annotations

import logging

import pytest

from app.venues import replay_adapter
from book.registry import BookRegistry
from feeds.backoff import Backoff
from feeds.okx.adapter import OkxAdapter, okx_symbols
from feeds.okx.channels import OkxChannel, OkxCredentials, login_answer
from feeds.recordings import FrameKind, RecordedFrame
from feeds.replay import Replay
from feeds.runner import FeedRunner
from feeds.simulator.okx import OkxSimulator
from feeds.symbols import SymbolMap
from feeds.venue import HandshakeAnswer
from tests.feeds.rig import running
from tests.waiting import eventually

SYMBOLS = okx_symbols(["BTC-USDT", "ETH-USDT"])
BOOKS = [f"okx:{name}" for name in SYMBOLS]
KEY = OkxCredentials("key-1", "secret-1", "pass-1")


@pytest.mark.parametrize(
    ("frame", "answer"),
    [
        ('{"event":"login","code":"0","msg":"","connId":"a4d3ae55"}', HandshakeAnswer(True)),
        (
            b'{"event":"error","code":"60009","msg":"Login failed.","connId":"a4d3ae55"}',
            HandshakeAnswer(False, "60009", "Login failed."),
        ),
        (
            '{"event":"login","code":"60024","msg":"Wrong passphrase"}',
            HandshakeAnswer(False, "60024", "Wrong passphrase"),
        ),
        ("pong", None),
        ('{"event":"notice","code":"64008","msg":"upgrade"}', None),
        ('{"event":"channel-conn-count","channel":"books","connCount":"2"}', None),
        ("not json", None),
        ("[1, 2]", None),
    ],
)
def test_the_login_answer_is_read_from_okx_frames(
    frame: str | bytes, answer: HandshakeAnswer | None
) -> None:
    assert login_answer(frame) == answer


def test_only_a_venue_with_credentials_logs_in() -> None:
    assert OkxAdapter(SymbolMap("okx", SYMBOLS)).handshake() is None
    adapter = OkxAdapter(SymbolMap("okx", SYMBOLS), credentials=KEY, clock=lambda: 1700000000.0)
    handshake = adapter.handshake()
    assert handshake is not None and handshake.name == "login"
    assert handshake.answer is login_answer
    (login,) = handshake.frames
    assert '"timestamp":"1700000000"' in login
    assert all('"login"' not in frame for frame in adapter.subscribe_frames(BOOKS))


def _runner(
    simulator: OkxSimulator,
    registry: BookRegistry,
    credentials: OkxCredentials,
    login_timeout: float = 10.0,
) -> FeedRunner:
    adapter = OkxAdapter(
        SymbolMap("okx", SYMBOLS),
        ws_base=simulator.ws_url,
        channel=OkxChannel.BOOKS50_L2_TBT,
        credentials=credentials,
        login_timeout=login_timeout,
    )
    return FeedRunner(
        adapter, sink=registry, capture_depth=10, backoff=Backoff(initial=0.01, maximum=0.05)
    )


async def test_the_runner_subscribes_only_after_the_login_ack() -> None:
    """OKX answers a login on its own time; a subscribe sent before the ack is refused
    (60011), so the books would never come."""
    simulator = OkxSimulator(
        updates_per_second=50, levels=60, seed=5, credentials=KEY, login_delay=0.3
    )
    async with simulator:
        registry = BookRegistry()
        runner = _runner(simulator, registry, KEY)
        async with running([runner], registry, BOOKS):
            assert runner.counters.venue_errors == 0  # no 60011 "Please log in"
            assert runner.counters.handshake_failures == 0
            assert runner.connections == 1


async def test_a_refused_login_is_logged_counted_and_retried_without_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = OkxCredentials("key-1", "not-the-secret-xyz", "pass-phrase-xyz")
    async with OkxSimulator(updates_per_second=50, seed=6, credentials=KEY) as simulator:
        registry = BookRegistry()
        runner = _runner(simulator, registry, wrong)
        with caplog.at_level(logging.INFO):
            async with running([runner], registry, []):
                await eventually(
                    lambda: runner.counters.handshake_failures >= 2, "refused, then retried"
                )
                assert simulator.connections_accepted >= 2
                assert not any(map(registry.is_live, BOOKS))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    refused = "okx: login refused: code 60009: Login failed."
    assert errors and all(record.getMessage() == refused for record in errors)
    text = caplog.text
    assert "not-the-secret-xyz" not in text and "pass-phrase-xyz" not in text


async def test_an_unanswered_login_times_out_and_is_retried() -> None:
    simulator = OkxSimulator(updates_per_second=50, seed=7, credentials=KEY, login_delay=60)
    async with simulator:
        registry = BookRegistry()
        runner = _runner(simulator, registry, KEY, login_timeout=0.2)
        async with running([runner], registry, []):
            await eventually(lambda: runner.counters.handshake_failures >= 2, "timed out twice")


async def test_a_recording_shows_the_subscribe_after_the_ack_and_replays() -> None:
    frames: list[RecordedFrame] = []
    simulator = OkxSimulator(updates_per_second=50, levels=60, seed=8, credentials=KEY)
    async with simulator:
        registry = BookRegistry()
        runner = _runner(simulator, registry, KEY)
        runner.recorder = frames.append
        async with running([runner], registry, BOOKS):
            pass
    kinds = [(frame.kind, frame.data[:19]) for frame in frames[:4]]
    assert kinds == [
        (FrameKind.CONNECT, ""),
        (FrameKind.SEND, '{"op":"login","args'),
        (FrameKind.RECV, '{"event":"login","c'),
        (FrameKind.SEND, '{"op":"subscribe","'),
    ]
    replay = Replay(replay_adapter("okx"))
    published = list(replay.snapshots(frames))
    assert {snapshot.instrument for snapshot in published} == set(BOOKS)
    assert replay.session.counters.venue_errors == 0
    assert replay.summary()["live"] == sorted(BOOKS)
