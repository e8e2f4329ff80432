"""``marketcast token --account A [--config FILE] [--ttl SECONDS] [--operator|--admin]``.

The token is signed with the server's secret (``[auth].secret``, or the secret file the
server creates beside its database), so run it with the server's config: it never
creates a secret file of its own, since a token signed with a secret the server does not
use would be refused. Present it on a connection with ``{"op":"auth","token":"..."}``,
``marketcast subscribe --token``, or over HTTP as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse

from app.auth import auth_policy
from app.exceptions import ConfigError
from app.settings import read_settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="issue an auth token for an account")
    token.add_argument("--account", required=True, help="the account the token acts for")
    token.add_argument("--config", help="the server's TOML config (default: the demo's)")
    token.add_argument(
        "--ttl", type=float, help="seconds the token is valid (default [auth].token_ttl_seconds)"
    )
    role = token.add_mutually_exclusive_group()
    role.add_argument(
        "--operator", action="store_true", help="may read /dashboard, /stats and /metrics"
    )
    role.add_argument(
        "--admin", action="store_true", help="an operator that may also run admin ops"
    )
    token.set_defaults(command=_token)


def _token(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    ttl = settings.auth.token_ttl_seconds if args.ttl is None else args.ttl
    policy = auth_policy(settings, create_secret=False)
    try:
        token = policy.tokens.issue(args.account, ttl=ttl, operator=args.operator, admin=args.admin)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(token)
    return 0
