"""What build of marketcast is running: the package version and the source commit, for
``marketcast --version`` and ``marketcast_build_info``."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

COMMIT_ENV = "MARKETCAST_COMMIT"
"""Set by a container build to the commit it was built from (no .git in an image)."""


@dataclass(frozen=True, slots=True)
class Build:
    version: str
    commit: str


@cache
def build() -> Build:
    """The installed version, and the commit from ``MARKETCAST_COMMIT`` or, in a source
    checkout, ``git``; ``unknown`` when neither says. Computed once."""
    try:
        version = metadata.version("marketcast")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return Build(version, os.environ.get(COMMIT_ENV) or _git_commit() or "unknown")


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None
