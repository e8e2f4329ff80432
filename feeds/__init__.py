"""Exchange feed handlers: sans-I/O venue parsers, per-instrument sync, connection runners."""
