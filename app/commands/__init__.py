"""One module per ``marketcast`` subcommand; each exposes ``register(subparsers)``."""
