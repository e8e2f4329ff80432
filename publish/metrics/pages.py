"""The HTTP routes of metrics: ``/metrics`` (Prometheus text), ``/stats`` (JSON; ``?since=
<ns>`` limits ``history`` to newer points) and ``/dashboard`` (the self-contained page).

They are operator routes (``publish.http.Access.OPERATOR``): open unless ``[auth]``
says otherwise; the dashboard also takes its token as ``?token=`` and sends it on to
``/stats`` as a bearer token.

What ``publish`` cannot see of the process (the heap keeper of ``app.heap``) comes in
through the constructor: Prometheus ``collectors`` for ``/metrics`` and ``sections``,
more top-level keys of ``/stats``, each read at request time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from importlib import resources
from typing import Any

from prometheus_client.registry import Collector
from websockets.http11 import Response

from publish.http import Access, HttpRequest, HttpRoutes, http_response, json_response
from publish.metrics.prometheus import CONTENT_TYPE, ExtraGauge, PrometheusExporter
from publish.metrics.service import Metrics

DASHBOARD_HTML = resources.files(__package__).joinpath("dashboard.html").read_bytes()
"""The dashboard page: inline CSS and JS, no external assets; it polls ``/stats``."""


class MetricsPages:
    """Serves ``metrics`` over HTTP; ``install`` adds its routes to a route table."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        role: str = "all",
        gauges: Sequence[ExtraGauge] = (),
        collectors: Iterable[Collector] = (),
        sections: Mapping[str, Callable[[], Any]] = {},
    ) -> None:
        """``sections``: key of ``/stats`` -> what reads its value (JSON-serialisable)."""
        self._metrics = metrics
        self._sections = dict(sections)
        self._exporter = PrometheusExporter(
            metrics, role=role, gauges=gauges, collectors=collectors
        )

    def install(self, routes: HttpRoutes) -> None:
        routes.add("/metrics", self.prometheus, access=Access.OPERATOR)
        routes.add("/stats", self.stats, access=Access.OPERATOR)
        routes.add("/dashboard", self.dashboard, access=Access.OPERATOR, token_in_query=True)

    def prometheus(self, request: HttpRequest) -> Response:
        return http_response(HTTPStatus.OK, self._exporter.render(), CONTENT_TYPE)

    def stats(self, request: HttpRequest) -> Response:
        """All of ``Metrics.stats`` and the ``sections``; ``since`` that is not a number
        counts as 0."""
        given = request.query.get("since", ["0"])[-1]
        since = int(given) if given.isascii() and given.isdigit() else 0
        body = self._metrics.stats_json(since=since, sections=self._sections)
        return json_response(HTTPStatus.OK, body)

    def dashboard(self, request: HttpRequest) -> Response:
        return http_response(HTTPStatus.OK, DASHBOARD_HTML, "text/html; charset=utf-8")
