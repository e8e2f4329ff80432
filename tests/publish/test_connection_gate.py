"""ConnectionGate: the TCP cap and the per-address limit, counted exactly."""

from __future__ import annotations

from publish.server import HTTP_HEADROOM, ConnectionGate


def test_the_tcp_cap_leaves_headroom_above_the_session_cap() -> None:
    gate = ConnectionGate(session_cap=3, max_per_ip=0)
    assert gate.tcp_cap == 3 + HTTP_HEADROOM
    admitted = [gate.opened(f"10.0.0.{n % 7}") for n in range(gate.tcp_cap + 2)]
    assert admitted == [True] * gate.tcp_cap + [False, False]
    assert (gate.total, gate.refused) == (gate.tcp_cap + 2, 2)
    gate.closed("10.0.0.0")
    assert gate.opened("10.0.0.9") is False  # still over: total counts every open one
    gate.closed("10.0.0.9")
    for n in range(1, gate.tcp_cap + 2):
        gate.closed(f"10.0.0.{n % 7}")
    assert gate.total == 0
    assert gate.opened("10.0.0.0") is True


def test_the_per_address_limit() -> None:
    gate = ConnectionGate(session_cap=100, max_per_ip=2)
    for _ in range(3):
        gate.opened("10.0.0.1")
    gate.opened("10.0.0.2")
    assert gate.over_ip_limit("10.0.0.1") and not gate.over_ip_limit("10.0.0.2")
    gate.closed("10.0.0.1")
    assert not gate.over_ip_limit("10.0.0.1")
    unlimited = ConnectionGate(session_cap=100, max_per_ip=0)
    for _ in range(50):
        unlimited.opened("10.0.0.1")
    assert not unlimited.over_ip_limit("10.0.0.1")
    _, details = unlimited.health(sessions=7)
    assert {k: details[k] for k in ("websocket_sessions", "tcp_open", "session_cap")} == {
        "websocket_sessions": 7,
        "tcp_open": 50,
        "session_cap": 100,
    }
