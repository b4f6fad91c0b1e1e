"""Which request bodies the hub reads at all, decided from the request line and headers.

A server reads a body before the app runs (the bridge receives it whole, and spools one
over 1 MiB to a file in the data folder). Read first and checked after, any client could
make the hub hold what it sends: two connections to a route that did not exist held 58
of 63 MiB of a data folder, and every real upload then got 507. So before a byte of the
body is read:

- the route must exist for the method (404, 405 otherwise);
- the caller must be one that route accepts: the device whose id is in the path (its
  token), an admin token, or a dashboard session; only the login form is public;
- the declared length must be within that route's own limit (413): uploads and staging
  have theirs, every other route ``MAX_REQUEST_BYTES``;
- a body that will not fit in memory must fit the hub-wide spool budget, which leaves the
  stores their room on the disk (507).

The same checks run again in the app (they are its ``before_request`` rules); this module
only keeps the bytes out until they pass. It knows nothing of the server: the bridge asks
``BodyAdmission.decide`` with the WSGI environ and reads no more than it answers.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.http import parse_cookie
from werkzeug.routing import Map, RequestRedirect

from ..errors import DropSyncError
from .limits import RateLimited

#: An environ's view of the request: the route's arguments and the WSGI environ.
Authenticator = Callable[[Mapping[str, Any], Mapping[str, Any]], None]


@dataclass(frozen=True)
class Admitted:
    """Read the body, at most ``limit`` bytes."""

    limit: int


@dataclass(frozen=True)
class Refusal:
    """Answer this instead of reading the body."""

    status: int
    code: str
    message: str


class SpoolBudget:
    """Bytes of request bodies on disk at once, hub-wide: at most ``max_bytes``, and never
    so many that the data folder's file system keeps less than ``reserve_bytes`` free
    (the stores' room: their writes would answer 507)."""

    def __init__(self, folder: Path | str, max_bytes: int, reserve_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Hold ``size`` more bytes for a body being spooled; False: no room."""
        with self._lock:
            if self.held + size > self.max_bytes:
                return False
            try:
                free = shutil.disk_usage(self.folder).free
            except OSError:
                return False
            if free - self.held - size < self.reserve_bytes:  # held: maybe not written yet
                return False
            self.held += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.held = max(0, self.held - size)


class BodyAdmission:
    """The route, the caller and the limit of a request with a body, before reading it."""

    def __init__(self, url_map: Map, *, authenticators: Mapping[str, Authenticator],
                 public_endpoints: set[str], route_limits: Mapping[str, int],
                 default_limit: int):
        self.urls = url_map.bind("hub")
        self.authenticators = authenticators
        self.public_endpoints = public_endpoints
        self.route_limits = route_limits
        self.default_limit = default_limit

    def decide(self, environ: Mapping[str, Any]) -> Admitted | Refusal:
        method = environ["REQUEST_METHOD"]
        try:
            endpoint, view_args = self.urls.match(environ.get("PATH_INFO", ""), method)
        except RequestRedirect:  # the app answers with the redirect: a small body at most
            return Admitted(self.default_limit)
        except MethodNotAllowed:
            return Refusal(405, "method_not_allowed",
                           f"this route does not take {method}; see /api/v1/docs")
        except (NotFound, HTTPException):
            return Refusal(404, "not_found", "no such route; see /api/v1/docs")
        limit = self.route_limits.get(endpoint, self.default_limit)
        declared = declared_length(environ)
        if endpoint not in self.public_endpoints:
            authenticate = self.authenticators.get(endpoint.partition(".")[0])
            if authenticate is None:  # a route no caller may send a body to
                return Refusal(405, "method_not_allowed", "this route takes no body")
            try:
                authenticate(view_args, environ)
            except DropSyncError as refused:
                return Refusal(refused.status, refused.code, refused.message)
            except RateLimited as limited:
                return Refusal(429, "rate_limited", f"too many requests: the limit is "
                               f"{limited.limit.rate}; retry later")
        if declared is not None and declared > limit:
            return Refusal(413, "payload_too_large",
                           f"this route takes a body of at most {limit} bytes")
        return Admitted(limit)


def declared_length(environ: Mapping[str, Any]) -> int | None:
    text = environ.get("CONTENT_LENGTH") or ""
    return int(text) if text.isdigit() else None


def session_id_of(environ: Mapping[str, Any], cookie_name: str,
                  loads: Callable[[str], Any]) -> str | None:
    """The dashboard session id a request's signed cookie holds (``loads`` checks the
    signature and age), or None."""
    cookie = parse_cookie(environ.get("HTTP_COOKIE", "")).get(cookie_name)
    if not cookie:
        return None
    try:
        session = loads(cookie)
    except Exception:  # noqa: BLE001 (a bad or expired signature: no session)
        return None
    return session.get("sid") if isinstance(session, dict) else None


def body_limits(config: Mapping[str, Any]) -> dict[str, int]:
    """The routes whose bodies may be larger than ``MAX_REQUEST_BYTES`` (or must be
    smaller: anyone may send to the enrollment routes, and a board's request is small)."""
    from ..fleet.enrollment import ENROLL_BODY_MAX_BYTES
    from ..sync.uploads import MULTIPART_OVERHEAD

    return {"files.upload": config["UPLOAD_MAX_BYTES"] + MULTIPART_OVERHEAD,
            "admin.stage_file": config["STAGING_UPLOAD_MAX_BYTES"],
            "dashboard.stage_file": config["STAGING_UPLOAD_MAX_BYTES"],
            "enroll.enroll": ENROLL_BODY_MAX_BYTES, "enroll.claim": ENROLL_BODY_MAX_BYTES}


def body_admission(app) -> BodyAdmission:
    """The admission of ``app``'s routes, with the credentials its blueprints require."""
    from ..dashboard.auth import PUBLIC_ENDPOINTS
    from ..errors import Unauthorized
    from ..fleet import credentials
    from .device_requests import Caller, bearer_of

    hub = app.extensions["dropsync"]
    serializer = app.session_interface.get_signing_serializer(app)
    max_age = int(app.permanent_session_lifetime.total_seconds())
    cookie_name = app.config["SESSION_COOKIE_NAME"]

    gate = app.extensions["dropsync.gate"]

    def device_of(blueprint: str) -> Authenticator:
        def device(view_args, environ) -> None:  # the gate's check, counting nothing
            gate.identify(blueprint, view_args.get("device_id", ""), Caller.of(environ))
        return device

    def admin(view_args, environ) -> None:
        hub.admin.identify(bearer_of(environ.get("HTTP_AUTHORIZATION", "")))

    def operator(view_args, environ) -> None:
        sid = session_id_of(environ, cookie_name,
                            lambda value: serializer.loads(value, max_age=max_age))
        if credentials.session_operator(hub.stores, sid) is None:
            raise Unauthorized("log in to the dashboard first", code="login_required")

    enroll_limit = app.extensions["dropsync.enroll_limit"]

    def board(view_args, environ) -> None:
        """Enrollment: a board has no token yet; its credential (the enrollment key or
        its secret) is in the small body. An address past its rate is refused here, on
        the event loop, before a thread or the app sees it (the route counts)."""
        address = Caller.of(environ).address
        if enroll_limit is not None and enroll_limit.exceeded(address):
            raise RateLimited(enroll_limit, (address,))

    return BodyAdmission(app.url_map, authenticators={"device": device_of("device"),
                                                      "files": device_of("files"),
                                                      "admin": admin, "dashboard": operator,
                                                      "enroll": board},
                         public_endpoints=set(PUBLIC_ENDPOINTS),
                         route_limits=body_limits(app.config),
                         default_limit=app.config["MAX_REQUEST_BYTES"])
