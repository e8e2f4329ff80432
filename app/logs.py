"""Logging setup: text lines for people, or ``--log-format json`` for log pipelines.

JSON is one object per line: ``time`` (ISO 8601, UTC, microseconds), ``level``,
``logger``, ``message``, every field passed with ``extra=`` (``venue``, ``instrument``,
...) as its own key, the client address of websockets' records as ``client``, and
``exception`` (the formatted traceback) when there is one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from publish.logthrottle import client_of

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHATTY_LOGGERS = ("websockets.server", "websockets.client", "httpx")
"""One line per HTTP request or connection: noise at INFO."""

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName", "websocket"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        client = client_of(record)
        if client is not None:
            entry["client"] = client
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def configure_logging(*, verbose: bool, log_format: str) -> None:
    """A root handler on stderr in ``log_format``, unless the root logger has handlers
    already (like ``logging.basicConfig``: an embedding program's or a test's stay in
    charge); DEBUG when ``verbose``."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
        )
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for chatty in CHATTY_LOGGERS:
            logging.getLogger(chatty).setLevel(logging.WARNING)
