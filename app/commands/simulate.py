"""``marketcast simulate --venue V --port P``: a fake venue speaking that exchange's protocol."""

from __future__ import annotations

import argparse

from app.exceptions import ConfigError
from app.loop import run_until_signalled
from feeds.simulator.binance import BinanceSpotSimulator, Fault, run_binance_simulator

SIMULATED_VENUES = ("binance",)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser("simulate", help="run a simulated venue on loopback")
    sim.add_argument("--venue", required=True, choices=SIMULATED_VENUES)
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="0 picks a free port")
    sim.add_argument("--rate", type=float, default=100.0, help="book updates/s per symbol")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=[fault.value for fault in Fault],
        help="inject this fault periodically (repeatable)",
    )
    sim.add_argument("--fault-interval", type=float, default=10.0, help="seconds between faults")
    sim.set_defaults(command=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    if args.rate <= 0:
        raise ConfigError("--rate must be positive")

    def ready(simulator: BinanceSpotSimulator) -> None:
        print(
            f"simulated {args.venue} venue: websocket {simulator.ws_url}, "
            f"REST {simulator.rest_url}, symbols {', '.join(simulator.symbols)}",
            flush=True,
        )

    return run_until_signalled(
        run_binance_simulator(
            host=args.host,
            port=args.port,
            updates_per_second=args.rate,
            seed=args.seed,
            faults=[Fault(name) for name in args.fault],
            fault_interval=args.fault_interval,
            on_ready=ready,
        )
    )
