"""``marketcast cluster [--config FILE] [--edges N] [--shards K]``: one ingest, K positions
shards and N edges on this machine over a nats-server of their own (see ``app.cluster``)."""

from __future__ import annotations

import argparse
import logging
import os

from app.auth import auth_policy
from app.cluster import ClusterPlan, Supervisor, plan_cluster
from app.commands.run import banner
from app.exceptions import ConfigError
from app.loop import run_until_signalled
from app.preflight import check_port_free
from app.settings import Settings, read_settings
from book.instruments import instrument_id

log = logging.getLogger("marketcast.cluster")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = commands.add_parser(
        "cluster", help="run one ingest and N edges on this machine (many cores)"
    )
    cluster.add_argument("--config", help="TOML config file (none: the offline demo)")
    cluster.add_argument(
        "--edges",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="edge processes sharing [server].port (default: cores - 1)",
    )
    cluster.add_argument(
        "--shards",
        type=int,
        default=1,
        help="positions shards (default: 1; every node gets [bus].shards = K)",
    )
    cluster.add_argument("--port", type=int, help="override [server].port")
    cluster.set_defaults(command=_cluster)


def _cluster(args: argparse.Namespace) -> int:
    if args.edges < 1:
        raise ConfigError("--edges must be at least 1")
    if args.shards < 1:
        raise ConfigError("--shards must be at least 1")
    settings = read_settings(args.config)
    if args.port is not None:
        settings = settings.with_port(args.port)
    if not settings.venues:
        raise ConfigError("the cluster's ingest needs at least one [[venues]]")
    check_port_free(settings.server.host, settings.server.port)
    auth_policy(settings)  # creates the token secret once, before the children share it
    plan = plan_cluster(
        host=settings.server.host,
        port=settings.server.port,
        edges=args.edges,
        bus_servers=settings.bus.servers if settings.bus.url else (),
        run_args=["--config", args.config] if args.config else [],
        cli_args=["--log-format", args.log_format, *(["-v"] if args.verbose else [])],
        shards=args.shards,
    )
    if not settings.bus.url and settings.bus.credentials.method != "none":
        log.warning(
            "[bus].url is not set: the cluster starts its own nats-server on loopback, "
            "without login, and its nodes connect to it without [bus] credentials"
        )
    supervisor = Supervisor(
        plan, on_ready=lambda ready: print(_banner(settings, ready), flush=True)
    )
    return run_until_signalled(supervisor.run())


def _banner(settings: Settings, plan: ClusterPlan) -> str:
    instruments = [
        instrument_id(venue.id, symbol) for venue in settings.venues for symbol in venue.symbols
    ]
    host = plan.host
    title = (
        f"marketcast cluster ({plan.edges} edge{'s' if plan.edges > 1 else ''}, 1 ingest, "
        f"{plan.shards} positions shard{'s' if plan.shards > 1 else ''}) "
        f"is serving {', '.join(instruments)}"
    )
    return banner(
        title,
        f"ws://{host}:{plan.port}/ws",
        f"http://{host}:{plan.port}",
        instruments[0],
        f"  ingest:    http://{host}:{plan.ingest_port}/health  (feeds, storage)",
        *(
            f"  shard {k}:   http://{host}:{port}/health  (positions shard {k} of {plan.shards})"
            for k, port in enumerate(plan.shard_ports)
        ),
        f"  bus:       {plan.nats_url}" + ("  (started here)" if plan.start_nats else ""),
    )
