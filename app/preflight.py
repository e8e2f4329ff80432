"""What ``marketcast run`` checks before it starts anything (simulators, files, sockets):
the listening address is free, storage is reachable, the token secret file is usable.
Each problem is a ``ConfigError`` whose message says what and where, so the command
prints one line and exits 2 instead of failing halfway through its start."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from app.exceptions import ConfigError
from app.settings import Settings, StorageSettings
from bus.exceptions import CredentialsError
from publish.auth import load_secret
from publish.exceptions import SecretFileError


def check_before_start(settings: Settings) -> None:
    """Raise ``ConfigError`` for the first thing that would stop the server starting."""
    check_port_free(settings.server.host, settings.server.port)
    check_storage(settings.storage)
    check_secret_file(settings)
    if settings.node.role != "all":
        check_bus_credentials(settings)


def check_bus_credentials(settings: Settings) -> None:
    """The ``[bus]`` files (``.creds``, TLS CA, certificate and key) load."""
    try:
        settings.bus.credentials.check()
    except CredentialsError as exc:
        raise ConfigError(str(exc)) from None


def check_port_free(host: str, port: int, *, reuse_port: bool = False) -> None:
    """The address can be listened on (port 0 always can: the OS picks one); with
    ``reuse_port``, by one more process sharing it (edges, SO_REUSEPORT)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"[server].host {host!r}: cannot resolve it ({exc.strerror})") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # The same option asyncio's server sets, so a port in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"port {port} on {host} is already in use ([server].port, --port)"
                    ) from None
                raise ConfigError(
                    f"cannot listen on {host}:{port} ([server].host/port): {exc.strerror}"
                ) from None


def check_storage(storage: StorageSettings) -> None:
    if storage.backend == "postgres":
        asyncio.run(_check_postgres(storage))
        return
    path = Path(storage.path)
    directory = path.parent
    if not directory.is_dir():
        raise ConfigError(f"[storage].path {path}: the directory {directory} does not exist")
    if path.exists():
        if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"[storage].path {path}: not a file this user can read and write")
    elif not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"[storage].path {path}: cannot create files in {directory}")


async def _check_postgres(storage: StorageSettings) -> None:
    try:
        import asyncpg
    except ImportError:
        raise ConfigError(
            "[storage].backend = 'postgres' needs asyncpg: pip install 'marketcast[postgres]'"
        ) from None
    where = _redacted(storage.dsn)
    try:
        connection = await asyncpg.connect(storage.dsn, timeout=storage.timeout_ms / 1000)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ConfigError(
            f"[storage].dsn: cannot connect to PostgreSQL at {where}: {reason}"
        ) from None
    await connection.close()


def _redacted(dsn: str) -> str:
    """``dsn`` without its password, to be shown in messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def check_secret_file(settings: Settings) -> None:
    """An existing secret file must be private (the server creates a missing one)."""
    path = settings.secret_path
    if settings.auth.secret is not None or not path.exists():
        return
    try:
        load_secret(
            secret=None,
            secret_file=path,
            create=False,
            allow_shared_file=settings.auth.allow_shared_secret_file,
        )
    except SecretFileError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"token secret file {path}: {exc.strerror}") from None
