"""Logging in to NATS with ``[bus]`` credentials, against real nats-servers that require
them: user and password, token, a ``.creds`` file (operator mode, JWTs made here) and TLS
(certificates made here, client certificates verified). The right credentials connect and
carry messages; wrong ones give an error naming the bus and the keys, the link retries
and nothing crashes; no secret ever appears in a log, /health, /metrics or a banner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.preflight import check_bus_credentials
from app.settings import BusSettings, Settings
from bus.credentials import BusCredentials, redact_url
from bus.exceptions import CredentialsError
from bus.link import BusLink
from bus.natsserver import NatsServer, auth_config, tls_config
from tests.bus.natsjwt import Operator
from tests.bus.tlscerts import make_tls
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

PASSWORD = "s3cret-Pa55word-never-shown"
TOKEN = "t0ken-never-shown-anywhere"


@contextlib.asynccontextmanager
async def running(link: BusLink) -> AsyncIterator[BusLink]:
    task = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def round_trip(link: BusLink) -> bytes:
    """A request answered over the bus by the same connection (data flows)."""
    client = await link.wait_connected()

    async def echo(msg: object) -> None:
        await msg.respond(b"pong:" + msg.data)  # type: ignore[attr-defined]

    subscription = await client.subscribe("test.echo", cb=echo)
    try:
        reply = await client.request("test.echo", b"ping", timeout=5)
    finally:
        await subscription.unsubscribe()
    return reply.data


async def refused(link: BusLink, reason: str = "") -> str:
    """The link's reason for not being connected, once it has one (holding ``reason``);
    it keeps trying."""
    await eventually(
        lambda: bool(link.state.last_error) and reason in link.state.last_error,
        f"the bus refused the login ({reason or 'any reason'})",
    )
    assert not link.connected
    return link.state.last_error


def link(server: NatsServer, credentials: BusCredentials, url: str | None = None) -> BusLink:
    return BusLink([url or server.url], name="test", credentials=credentials)


async def test_user_and_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bus")
    with NatsServer(config=auth_config(user="marketcast", password=PASSWORD)) as server:
        right = BusCredentials(user="marketcast", password=PASSWORD)
        async with running(link(server, right)) as node:
            assert await round_trip(node) == b"pong:ping"
        wrong = link(server, BusCredentials(user="marketcast", password="not-it"))
        async with running(wrong) as node:
            await refused(node, "Authorization Violation")
            await asyncio.sleep(1)  # it retries, without crashing
            assert node.state.errors > 1 and not node.connected
        # In the URL instead: connects, and the password is shown nowhere.
        in_url = server.url.replace("nats://", f"nats://marketcast:{PASSWORD}@")
        async with running(link(server, BusCredentials(), in_url)) as node:
            assert await round_trip(node) == b"pong:ping"
            assert node.state.server == f"nats://marketcast:***@127.0.0.1:{server.port}"
            assert PASSWORD not in node.shown
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        "refused the credentials ([bus].user and [bus].password)" in m
        and server.url in m
        and "retrying" in m
        for m in messages
    ), messages
    assert not any(PASSWORD in m or "not-it" in m for m in messages)


async def test_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bus")
    with NatsServer(config=auth_config(token=TOKEN)) as server:
        async with running(link(server, BusCredentials(token=TOKEN))) as node:
            assert await round_trip(node) == b"pong:ping"
        async with running(link(server, BusCredentials(token="wrong-token"))) as node:
            await refused(node, "Authorization Violation")
        async with running(link(server, BusCredentials())) as node:  # none at all
            await refused(node, "Authorization Violation")
    assert any("[bus].token" in r.getMessage() for r in caplog.records)
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


async def test_a_creds_file_of_an_operator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bus")
    operator = Operator()
    good = operator.user_creds(tmp_path / "node.creds")
    forged = operator.user_creds(tmp_path / "forged.creds", signer=Operator().account)
    with NatsServer(config=operator.server_config()) as server:
        async with running(link(server, BusCredentials(creds_file=str(good)))) as node:
            assert await round_trip(node) == b"pong:ping"
        async with running(link(server, BusCredentials(creds_file=str(forged)))) as node:
            await refused(node, "Authorization Violation")
        async with running(link(server, BusCredentials(user="u", password="p"))) as node:
            assert await refused(node)
    seed = good.read_text().split("SEED-----\n")[1].split("\n")[0]
    assert seed.startswith("SU")
    assert not any(seed in r.getMessage() for r in caplog.records)


async def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    files = make_tls(tmp_path / "tls")
    config = tls_config(
        cert_file=str(files.server_cert),
        key_file=str(files.server_key),
        ca_file=str(files.ca),
        verify=True,
    ) + auth_config(user="marketcast", password=PASSWORD)
    with NatsServer(config=config) as server:
        right = BusCredentials(
            user="marketcast",
            password=PASSWORD,
            tls_ca_file=str(files.ca),
            tls_cert_file=str(files.client_cert),
            tls_key_file=str(files.client_key),
        )
        for url in (server.url, server.url.replace("nats://", "tls://")):
            async with running(link(server, right, url)) as node:
                assert await round_trip(node) == b"pong:ping"
        # Another CA: the server's certificate is not trusted.
        other = make_tls(tmp_path / "other", ca_name="another CA")
        untrusted = BusCredentials(
            user="marketcast",
            password=PASSWORD,
            tls_ca_file=str(other.ca),
            tls_cert_file=str(files.client_cert),
            tls_key_file=str(files.client_key),
        )
        async with running(link(server, untrusted)) as node:
            await refused(node, "certificate verify failed")
        # No client certificate: the server refuses the handshake.
        anonymous = BusCredentials(user="marketcast", password=PASSWORD, tls_ca_file=str(files.ca))
        async with running(link(server, anonymous)) as node:
            assert await refused(node)


async def test_a_broken_creds_file_is_a_logged_error_and_a_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.creds"
    broken.write_text("-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n")
    with NatsServer() as server:
        async with running(link(server, BusCredentials(creds_file=str(broken)))) as node:
            reason = await refused(node)
    assert reason.startswith(f"[bus].creds_file {broken}: not a NATS credentials file")
    assert any("[bus].creds_file" in r.getMessage() for r in caplog.records)


def test_the_preflight_names_the_file_that_does_not_load(tmp_path: Path) -> None:
    from app.exceptions import ConfigError

    missing = tmp_path / "missing.creds"
    settings = Settings(bus=BusSettings(creds_file=str(missing))).with_role("edge")
    with pytest.raises(ConfigError, match=r"\[bus\].creds_file .*missing.creds: cannot read it"):
        check_bus_credentials(settings)
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate")
    settings = Settings(bus=BusSettings(tls_ca_file=str(bad_ca))).with_role("edge")
    with pytest.raises(ConfigError, match=r"\[bus\].tls_ca_file .*ca.pem: cannot load it"):
        check_bus_credentials(settings)
    with pytest.raises(CredentialsError):
        BusCredentials(tls_cert_file=str(bad_ca), tls_key_file=str(bad_ca)).check()


def test_secrets_are_never_in_a_repr_or_a_description() -> None:
    credentials = BusCredentials(user="marketcast", password=PASSWORD)
    settings = Settings(bus=BusSettings(user="marketcast", password=PASSWORD))
    for text in (repr(credentials), repr(settings), credentials.describe()):
        assert PASSWORD not in text
    assert credentials.describe() == "user 'marketcast'"
    assert TOKEN not in repr(BusCredentials(token=TOKEN))
    assert redact_url(f"nats://{TOKEN}@n1:4222") == "nats://***@n1:4222"
    assert redact_url("nats://n1:4222") == "nats://n1:4222"


async def test_nodes_log_in_with_their_settings_and_show_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An ingest, a positions shard and an edge with the right password: data flows to
    the edge; an edge with a wrong one is degraded, says why, and keeps running. No
    page or banner holds the password."""
    from dataclasses import replace

    import httpx

    from app.commands.run import _banner, _edge_banner, _shard_banner
    from app.positions_role import RunningShard, serve_shard
    from tests.bus.nodes import edge_node, edge_settings, ingest_node, ingest_settings

    caplog.set_level(logging.DEBUG)
    login = {"user": "marketcast", "password": PASSWORD}
    with NatsServer(config=auth_config(**login)) as server:
        ingest = ingest_settings(tmp_path / "i.db", server.url)
        ingest = replace(ingest, bus=replace(ingest.bus, **login))
        edge = edge_settings(server.url)
        edge = replace(edge, bus=replace(edge.bus, **login))
        wrong = replace(edge, bus=replace(edge.bus, password="not-the-password"))
        shard_settings = ingest.with_role("positions").with_storage_path(str(tmp_path / "m.db"))
        ready: asyncio.Future[RunningShard] = asyncio.get_running_loop().create_future()
        async with ingest_node(ingest) as ingest_server, edge_node(edge) as edge_server:
            shard_task = asyncio.create_task(serve_shard(shard_settings, on_ready=ready.set_result))
            try:
                shard = await ready
                names = ingest_server.registry.instruments()
                await eventually(
                    lambda: all(edge_server.registry.is_live(name) for name in names),
                    "the edge serves the ingest's books",
                )
                async with edge_node(wrong) as refused_edge, httpx.AsyncClient() as http:
                    link = refused_edge.edge.link
                    await refused(link, "Authorization Violation")
                    pages = {
                        url: (await http.get(url)).text
                        for base in (
                            edge_server.http_url,
                            ingest_server.http_url,
                            shard.http_url,
                            refused_edge.http_url,
                        )
                        for url in (f"{base}/health", f"{base}/metrics", f"{base}/stats")
                    }
                    health = (await http.get(f"{refused_edge.http_url}/health")).json()
                    good = (await http.get(f"{edge_server.http_url}/health")).json()
                    banners = [
                        _banner(ingest_server),
                        _edge_banner(edge_server),
                        _shard_banner(shard),
                        _edge_banner(refused_edge),
                    ]
            finally:
                shard_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await shard_task
    assert health["status"] == "degraded"
    assert health["node"]["bus"]["connected"] is False
    assert "Authorization Violation" in health["node"]["bus"]["last_error"]
    assert health["node"]["bus"]["login"] == "user 'marketcast'"
    assert good["node"]["bus"]["connected"] is True and good["node"]["bus"]["last_error"] == ""
    assert all("(user 'marketcast')" in banner for banner in banners), banners
    for where, text in [*pages.items(), *(("banner", b) for b in banners)]:
        assert PASSWORD not in text and "not-the-password" not in text, where
    for record in caplog.records:
        assert PASSWORD not in record.getMessage(), record.getMessage()
        assert "not-the-password" not in record.getMessage()


def test_a_cluster_s_own_nats_server_gets_no_credentials_and_a_given_bus_is_redacted() -> None:
    from app.cluster import LOGIN_ENV, plan_cluster

    own = plan_cluster(host="127.0.0.1", port=0, edges=1, run_args=[])
    for child in own.children():
        assert "--bus" not in child.command
        if child.python:
            assert child.env["MARKETCAST_BUS__URL"] == own.nats_url
            assert all(child.env[name] == "" for name in LOGIN_ENV)
    given = plan_cluster(
        host="127.0.0.1",
        port=0,
        edges=1,
        run_args=[],
        bus_servers=[f"nats://mc:{PASSWORD}@n1:4222", "nats://n2:4222"],
    )
    assert given.nats_url == "nats://mc:***@n1:4222, nats://n2:4222"
    for child in given.children():
        assert not any(PASSWORD in part for part in child.command)
        assert "MARKETCAST_BUS__PASSWORD" not in child.env
    assert not given.start_nats
