"""The websocket session cap at start and how it is reported: a ``max_connections`` the
operator set and cannot have is a warning; the default lowered only by the descriptor
reserve is not (every default start would warn, and teach operators to ignore it)."""

from __future__ import annotations

import logging

import pytest

from book.registry import BookRegistry
from publish.client import DEFAULT_MAX_CONNECTIONS, ServerLimits
from publish.exceptions import ServerStartError
from publish.fanout import Fanout
from publish.server import MarketServer, connection_cap, open_files_limit

RESERVE = 192


def test_the_default_lowered_only_by_the_reserve_is_information() -> None:
    cap = connection_cap(None, 20_000, RESERVE)
    assert (cap.sessions, cap.level) == (20_000 - RESERVE, logging.INFO)
    assert cap.message == (
        "serving at most 19808 connections: the default max_connections 20000 less the 192 "
        "descriptors reserved for storage, feeds, bus and HTTP (open-file limit 20000)"
    )
    assert connection_cap(None, 1 << 20, RESERVE).sessions == DEFAULT_MAX_CONNECTIONS


def test_a_configured_value_that_cannot_be_served_is_a_warning() -> None:
    cap = connection_cap(20_000, 20_000, RESERVE)
    assert (cap.sessions, cap.level) == (19_808, logging.WARNING)
    assert cap.message == (
        "serving at most 19808 connections, not [server.limits].max_connections 20000: the "
        "open-file limit is 20000 and 192 descriptors are reserved for storage, feeds, bus "
        "and HTTP"
    )
    assert connection_cap(500, 20_000, RESERVE).level == logging.INFO  # honoured


def test_an_open_file_limit_below_the_default_is_a_warning_even_unconfigured() -> None:
    cap = connection_cap(None, 1024, RESERVE)
    assert (cap.sessions, cap.level) == (1024 - RESERVE, logging.WARNING)
    assert "not [server.limits].max_connections 20000" in cap.message


def test_no_limit_and_no_room() -> None:
    assert connection_cap(None, None, RESERVE).sessions == DEFAULT_MAX_CONNECTIONS
    assert connection_cap(7, None, RESERVE).level == logging.INFO
    with pytest.raises(ServerStartError, match="leaves no descriptor for connections"):
        connection_cap(None, RESERVE, RESERVE)


@pytest.mark.parametrize("configured", [None, "the open-file limit"])
async def test_the_server_logs_the_cap_at_its_level(
    configured: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """This process's own open-file limit, a reserve that lowers the cap below it."""
    limit = open_files_limit()
    assert limit is not None and limit > 100
    reserved = limit - 100
    limits = ServerLimits() if configured is None else ServerLimits(max_connections=limit)
    expected = connection_cap(limits.max_connections, limit, reserved)
    registry = BookRegistry()
    caplog.set_level(logging.INFO, logger="publish.server")
    async with MarketServer(
        registry, Fanout(registry), limits=limits, reserved_fds=reserved
    ) as server:
        assert server.session_cap == expected.sessions == 100
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "publish.server"]
    assert (expected.level, expected.message) in logged
    if configured is not None:
        assert expected.level == logging.WARNING
