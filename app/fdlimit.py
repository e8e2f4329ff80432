"""The process's open-file limit: raised to the hard limit at start, so the connection
cap (``publish.server``) is as high as the system allows."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_open_file_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now (``None``:
    unlimited). Never fails: a limit that cannot be raised is logged and kept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        else:
            log.info("open-file limit raised from %d to the hard limit %d", soft, hard)
            soft = hard
    return None if soft == resource.RLIM_INFINITY else soft
