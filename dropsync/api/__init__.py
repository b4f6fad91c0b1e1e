"""HTTP interface of the API audiences (health, device, files, admin, docs, metrics, stock
updaters): their blueprints, and the error, auth, rate-limit and lane plumbing they share.
``create_app`` registers this, then the dashboard."""

from __future__ import annotations

from flask import Flask, Request, Response, current_app, has_request_context, request
from flask.sessions import SecureCookieSessionInterface

from ..ops import app as ops
from . import (  # noqa: F401 (admin_fleet, _files and _rollouts add routes to admin)
    admin,
    admin_enrollment,
    admin_files,
    admin_fleet,
    admin_ops,
    admin_rollouts,
    admin_sites,
    device,
    enroll,
    errors,
    files,
    health,
    lanes,
    limits,
    openapi,
    ota,
    parsing,
)
from .device_requests import DeviceGate


class SessionOnlyWithCookie(SecureCookieSessionInterface):
    """Flask builds a signing serializer for every request, even one that carries no
    session cookie; API requests never do, and the poll route should not pay for it."""

    def open_session(self, app: Flask, request: Request):
        if "HTTP_COOKIE" not in request.environ \
                or self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure whenever the request came over TLS (the dashboard's session cookie)."""
        return has_request_context() and request.is_secure \
            or super().get_cookie_secure(app)


def options_for_the_named_route() -> Response:
    """OPTIONS lists the methods of the route the path names. Flask's own answer is the
    union over every pattern the path matches, so ``/devices/register`` listed GET,
    PATCH and DELETE from ``/devices/<device_id>``."""
    rule = request.url_rule.rule
    response = current_app.response_class()
    for candidate in current_app.url_map.iter_rules():
        if candidate.rule == rule:
            response.allow.update(candidate.methods or ())
    return response


def sync_views_only(app: Flask) -> None:
    """Flask asks ``inspect`` whether every hook and view is a coroutine on every request
    (4% of a poll); the hub has none, so each function is checked once."""
    checked: dict = {}
    ensure_sync = app.ensure_sync

    def ensure_sync_once(func):
        try:
            return checked[func]
        except KeyError:
            checked[func] = found = ensure_sync(func)
            return found
        except TypeError:  # an unhashable callable: ask every time
            return ensure_sync(func)

    app.ensure_sync = ensure_sync_once


def init_app(app: Flask) -> None:
    app.session_interface = SessionOnlyWithCookie()
    lanes.init_app(app)  # inside ops' trusted-proxy wrapper
    ops.init_app(app)  # first: its request timer starts before auth and rate limits
    app.request_class = parsing.BoundedRequest  # the size limit for chunked bodies too
    app.make_default_options_response = options_for_the_named_route
    sync_views_only(app)
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(device.bp)
    app.register_blueprint(admin.bp)  # with the routes of admin_files
    app.register_blueprint(files.bp)
    app.register_blueprint(openapi.bp)
    app.after_request(openapi.static_security_headers)
    app.register_blueprint(ota.bp)
    app.register_blueprint(enroll.bp)
    app.register_blueprint(admin_ops.bp)  # /metrics
    rate_limits = limits.init_app(
        app, device_limits={device.bp: app.config["RATE_LIMIT_DEVICE"],
                            files.bp: app.config["RATE_LIMIT_FILES"],
                            ota.bp: app.config["RATE_LIMIT_DEVICE"]},
        guarded_blueprints=[device.bp, files.bp, admin.bp, ota.bp])
    app.extensions["dropsync.gate"] = DeviceGate(app.extensions["dropsync"], rate_limits)
    app.extensions["dropsync.enroll_limit"] = rate_limits.limit(
        "enroll", app.config["RATE_LIMIT_ENROLL"]) if rate_limits.enabled else None
