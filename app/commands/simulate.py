"""``marketcast simulate --venue V --port P``: a fake venue speaking that exchange's protocol.

Every venue id with a built-in simulator (``app.venues``) can be served: synthetic
books at ``--rate`` updates per second per symbol, and ``--fault`` (repeatable) faults
the venue supports injected in rotation every ``--fault-interval`` seconds. It prints
the endpoints to connect to, and the ``[[venues]]`` URLs that point marketcast at it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from app.exceptions import ConfigError
from app.loop import run_until_signalled
from app.venues import build_simulator, simulated_venues, venue_kind
from feeds.simulator.faults import Fault
from feeds.simulator.venue import LoopbackVenue, run_simulator


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser("simulate", help="run a simulated venue on loopback")
    sim.add_argument("--venue", required=True, choices=simulated_venues())
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="0 picks a free port")
    sim.add_argument("--rate", type=float, default=100.0, help="book updates/s per symbol")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=[fault.value for fault in Fault],
        help="inject this fault periodically (repeatable; the venue must support it)",
    )
    sim.add_argument("--fault-interval", type=float, default=10.0, help="seconds between faults")
    sim.set_defaults(command=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    def ready(simulator: LoopbackVenue[Any]) -> None:
        print(banner(args.venue, simulator), flush=True)

    return run_until_signalled(
        simulate(
            args.venue,
            host=args.host,
            port=args.port,
            rate=args.rate,
            seed=args.seed,
            faults=[Fault(name) for name in args.fault],
            fault_interval=args.fault_interval,
            on_ready=ready,
        )
    )


async def simulate(
    venue: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    rate: float = 100.0,
    seed: int = 0,
    faults: Sequence[Fault] = (),
    fault_interval: float = 10.0,
    on_ready: Callable[[LoopbackVenue[Any]], None] | None = None,
) -> None:
    """Serve venue id ``venue``'s simulator (its usual symbols) until cancelled.

    ``ConfigError``, before anything is served, for an unknown venue, a bad rate, a
    fault the venue cannot inject or a non-positive ``fault_interval``.
    """
    simulator = build_simulator(venue, updates_per_second=rate, seed=seed, host=host, port=port)
    try:
        await run_simulator(
            simulator, faults=faults, fault_interval=fault_interval, on_ready=on_ready
        )
    except ValueError as exc:  # run_simulator checks its arguments before serving
        raise ConfigError(f"{venue}: {exc}") from exc


def banner(venue: str, simulator: LoopbackVenue[Any]) -> str:
    """What ``marketcast simulate`` prints once the simulator listens."""
    lines = [f"simulated {venue} venue, symbols {', '.join(simulator.symbols)}"]
    lines += [f"  {purpose}: {url}" for purpose, url in simulator.endpoints.items()]
    ws_url, rest_url = venue_kind(venue).sim_endpoints(simulator)
    entry = f'id = "{venue}", ws_url = "{ws_url}"'
    if rest_url is not None:
        entry += f', rest_url = "{rest_url}"'
    lines.append(f"  as a marketcast [[venues]] entry: {entry}")
    lines.append(f"  faults it can inject: {', '.join(sorted(simulator.supported_faults))}")
    return "\n".join(lines)
