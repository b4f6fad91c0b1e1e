"""Who is at the dashboard: login, logout, and the checks every dashboard request passes.

The browser's cookie (signed, HttpOnly, SameSite=Lax, Secure over TLS) carries a random
session id; the hub keeps only its hash, in the credentials store. Logging out deletes it,
so a copy of the old cookie stops working, and a password change deletes the operator's
other sessions. Every state change must carry the page's CSRF token (Flask-WTF) and, when
the browser says where it comes from, an ``Origin`` of this hub.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException

from ..api import errors as api_errors
from ..api.context import current_hub
from ..api.limits import client_address
from ..errors import DropSyncError, Forbidden, Unauthorized
from ..fleet import credentials
from ..fleet.devices import record_event
from . import SECURITY_HEADERS, bp, csrf

#: Endpoints open without a session (the login form and its post).
PUBLIC_ENDPOINTS = {"dashboard.login", "dashboard.login_submit"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def wants_json() -> bool:
    """The page's own scripts ask for JSON; a browser navigating asks for HTML."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" or request.args.get("live") == "1"


def operator_name() -> str:
    return g.operator


def actor() -> str:
    """How the audit trail names the operator behind a change."""
    return f"operator:{g.operator}"


@bp.before_request
def require_session_and_checks():
    """Session first (so an anonymous request learns only "log in"), then Origin and CSRF
    on every state change, including the login post itself."""
    if request.method == "OPTIONS":
        return None  # the route's methods (Allow): changes nothing, tells nothing private
    g.operator = credentials.session_operator(current_hub().stores, session.get("sid"))
    if g.operator is None and request.endpoint not in PUBLIC_ENDPOINTS:
        if wants_json():
            raise Unauthorized("log in to the dashboard first", code="login_required")
        back = request.full_path if request.method == "GET" else None
        return redirect(url_for("dashboard.login", next=back))
    if request.method not in SAFE_METHODS:
        check_origin()
        if request.endpoint == "dashboard.stage_file":  # a file, not a form: its own limit
            request.max_content_length = current_app.config["STAGING_UPLOAD_MAX_BYTES"]
        csrf.protect()
    return None


def check_origin() -> None:
    """A post from another site's page is refused even before its CSRF token is looked at.
    Browsers send ``Origin`` on every cross-site post (and ``Sec-Fetch-Site``)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        # Host and port, not the scheme: behind a proxy that ends TLS the hub itself is
        # asked over plain http by the same page.
        if urlsplit(origin).netloc != urlsplit(request.host_url).netloc:
            raise Forbidden(f"refused a post from another site ({origin})",
                            code="foreign_origin")
    elif request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Forbidden("refused a post from another site", code="foreign_origin")


@bp.after_request
def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        if name not in response.headers:
            response.headers[name] = value
    return response


# -- login and logout ------------------------------------------------------------------
def safe_next(target: str | None, fallback: str | None = None) -> str:
    """Only a path on this hub's dashboard: never an open redirect to another site, and
    never a control character (CR or LF would end the ``Location`` header: a 500)."""
    if target and target.startswith("/dashboard") and not target.startswith("//") \
            and "\\" not in target and target.isprintable():
        return target
    return fallback or url_for("dashboard.overview")


@bp.get("/login")
def login():
    if g.operator is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("dashboard/login.html", next=request.args.get("next", ""))


@bp.post("/login")
def login_submit():
    username = request.form.get("username", "").strip()[:64]
    password = request.form.get("password", "")
    next_url = request.form.get("next", "")
    limits = current_app.extensions["dropsync.login_limits"]
    address = client_address()
    retry_after = limits.retry_after_s(address, username)
    if retry_after is not None:
        page = render_template("dashboard/login.html", next=next_url, username=username,
                               error=f"Too many failed logins. Try again in {retry_after} s.")
        return page, 429, {"Retry-After": str(retry_after)}
    stores = current_hub().stores
    try:
        credentials.verify_operator(stores, username, password)
    except Unauthorized:
        limits.count_failure(address, username)
        record_event(stores, "operator.login_failed", None, username or None,
                     address=address)
        page = render_template("dashboard/login.html", next=next_url, username=username,
                               error="Wrong username or password.")
        return page, 401
    credentials.end_session(stores, session.get("sid"))
    session.clear()  # a new session (and CSRF token) at every login: no fixation
    session["sid"] = credentials.start_session(
        stores, username, current_app.config["DASHBOARD_SESSION_S"])
    record_event(stores, "operator.login", None, username, address=address)
    return redirect(safe_next(next_url))


@bp.post("/logout")
def logout():
    stores = current_hub().stores
    credentials.end_session(stores, session.get("sid"))
    record_event(stores, "operator.logout", None, g.operator)
    session.clear()
    return redirect(url_for("dashboard.login"))


# -- errors: HTML for pages, the JSON shape for the pages' scripts ------------------------
ERROR_TITLES = {400: "Bad request", 401: "Log in first", 403: "Not allowed",
                404: "Not found", 405: "Not allowed here", 409: "Conflict",
                413: "Too large", 415: "Unsupported", 429: "Too many requests",
                500: "Something went wrong", 507: "The hub's disk is full"}


def error_page(status: int, message: str, headers=()) -> Response:
    response = current_app.make_response((render_template(
        "dashboard/error.html", status=status, title=ERROR_TITLES.get(status, "Error"),
        message=message), status))
    for name, value in headers:
        if name in api_errors.KEPT_HEADERS:
            response.headers[name] = value
    return response


@bp.errorhandler(DropSyncError)
def dropsync_error(exc: DropSyncError):
    if wants_json():
        return api_errors.handle_dropsync_error(exc)
    return error_page(exc.status, exc.message)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    if exc.code is None or exc.code < 400:
        return exc
    if wants_json():
        return api_errors.handle_http_exception(exc)
    message = exc.description or exc.name
    if getattr(exc, "name", "") == "Bad Request" and "CSRF" in (exc.description or ""):
        message = f"{exc.description}. Reload the page and try again."
    return error_page(exc.code, message, exc.get_headers())


@bp.errorhandler(Exception)
def unexpected_error(exc: Exception):
    if wants_json():
        return api_errors.handle_unexpected(exc)
    api_errors.log.exception("unexpected error on a dashboard page")
    return error_page(500, "The hub hit an unexpected error; it has been logged.")
