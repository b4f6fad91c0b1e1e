"""One log line and one metrics update per request, and the client address behind a proxy.

The line is for journald (the service logs to stderr): who (the device id in the path),
what (the method and the route *pattern*, never the concrete path or query string), how it
went (status) and how long it took. Credentials travel only in headers and bodies, which
are never logged, so no token or password can reach the log.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from .metrics import HubMetrics

log = logging.getLogger("dropsync.requests")


def note_request(metrics: HubMetrics, log_requests: bool, method: str, route: str,
                 endpoint: str | None, status: int, seconds: float, length: int | None,
                 device_id: str, address: str) -> None:
    """The metrics and the log line every request gets, through Flask or a lane (never a
    credential: the route pattern, not the path or its query string)."""
    metrics.count_request(method, route, endpoint, status, seconds, length)
    if log_requests and log.isEnabledFor(logging.INFO):
        log.info("%s %s %d %.1fms device=%s client=%s", method, route, status,
                 seconds * 1000, device_id, address)

STARTED = "dropsync.started"


class RequestObserver:
    def __init__(self, metrics: HubMetrics, log_requests: bool):
        self.metrics = metrics
        self.log_requests = log_requests

    def start(self) -> None:
        request.environ[STARTED] = time.perf_counter()

    def finish(self, response: Response) -> Response:
        started = request.environ.get(STARTED)
        if started is None:  # a request that failed before our first hook
            return response
        rule = request.url_rule
        note_request(self.metrics, self.log_requests, request.method,
                     rule.rule if rule is not None else "-", request.endpoint,
                     response.status_code, time.perf_counter() - started,
                     response.content_length,
                     (request.view_args or {}).get("device_id") or "-", request.remote_addr)
        return response


class TrustedProxyFix:
    """``X-Forwarded-For``/``-Proto`` believed only from the proxies named in
    ``TRUSTED_PROXIES`` (one hop, as a local nginx adds). Anyone else could forge them to
    dodge the per-address failed-auth limit, so their requests pass through untouched.

    The one place forwarded headers are believed: the rate limits (``api/limits.py``)
    and the request log read the ``REMOTE_ADDR`` this wrapper has set.
    """

    def __init__(self, wsgi_app: Any, trusted: str):
        self.direct = wsgi_app
        self.proxied = ProxyFix(wsgi_app, x_for=1, x_proto=1)
        self.networks = [ipaddress.ip_network(item, strict=False)
                         for item in trusted.split(",") if item]

    def trusts(self, address: str | None) -> bool:
        try:
            peer = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(peer in network for network in self.networks)

    def __call__(self, environ: dict, start_response: Any):
        app = self.proxied if self.trusts(environ.get("REMOTE_ADDR")) else self.direct
        return app(environ, start_response)


def init_app(app: Flask, metrics: HubMetrics) -> RequestObserver:
    observer = RequestObserver(metrics, app.config["REQUEST_LOG"])
    # First before_request of all, so the time includes auth and rate limiting.
    app.before_request_funcs.setdefault(None, []).insert(0, observer.start)
    app.after_request(observer.finish)
    if app.config["TRUSTED_PROXIES"]:
        app.wsgi_app = TrustedProxyFix(app.wsgi_app, app.config["TRUSTED_PROXIES"])
    return observer
