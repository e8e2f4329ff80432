"""The fan-out's and its sessions' running totals, read by metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counters:
    """Running totals of the engine and its sessions, read by metrics (mutable, not locked:
    everything runs on one event loop)."""

    clients: int = 0
    """Sessions open now (a gauge)."""
    connections_total: int = 0
    ticks: int = 0
    messages_encoded: int = 0
    """Messages encoded by ticks: one per dirty topic with subscribers, however many."""
    messages_sent: int = 0
    frames_sent: int = 0
    conflated: int = 0
    """Queued messages replaced by a newer one of the same key before being written."""
    slow_closes: int = 0
    errors_sent: int = 0
    rate_limited: int = 0
    """Requests refused because the connection was over its ops-per-second budget."""
    error_closes: int = 0
    """Connections closed for using up their error budget (4029)."""
    auth_failures: int = 0
    tokens_expired: int = 0
    """Tokens that expired on an open connection (its token-bound streams stopped)."""
    admin_resyncs: int = 0
    """``admin.resync`` ops carried out."""
    admin_reconnects: int = 0
    """``admin.reconnect`` ops carried out."""
    admin_refused: int = 0
    """Admin ops refused for want of the admin role."""
    flush_errors: int = 0
    """Writes to a subscriber that raised (a bug or a dead transport; logged once)."""
