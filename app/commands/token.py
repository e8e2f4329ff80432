"""``marketcast token --account A [--config FILE] [--ttl SECONDS]``: issue an auth token.

The token is signed with the server's secret (``[auth].secret``, or the secret file the
server creates beside its database), so run it with the server's config. Present it on
a connection with ``{"op":"auth","token":"..."}`` or ``marketcast subscribe --token``.
"""

from __future__ import annotations

import argparse

from app.exceptions import ConfigError
from app.runtime import auth_policy
from app.settings import Settings, load_settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="issue an auth token for an account")
    token.add_argument("--account", required=True, help="the account the token acts for")
    token.add_argument("--config", help="the server's TOML config (default: the demo's)")
    token.add_argument(
        "--ttl", type=float, help="seconds the token is valid (default [auth].token_ttl_seconds)"
    )
    token.set_defaults(command=_token)


def _token(args: argparse.Namespace) -> int:
    settings = load_settings(args.config) if args.config else Settings.demo()
    ttl = settings.auth.token_ttl_seconds if args.ttl is None else args.ttl
    try:
        token = auth_policy(settings).tokens.issue(args.account, ttl=ttl)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(token)
    return 0
