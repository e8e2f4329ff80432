"""A nats-server of the test's own on a free loopback port (never the machine's 4222)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.natsserver import NatsServer


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server
