"""The operator dashboard at ``/dashboard``: server-rendered pages over the same services as
the admin API, for people with a browser instead of a token.

- ``auth``: login, logout, the session check, Origin and CSRF checks on every change;
- ``pages``: the pages and the form posts behind them;
- ``views``: what the pages show, computed from the hub's services (no Flask request);
- ``charts``: the RSSI and free-heap charts, drawn as inline SVG.

Pages stay live by polling their own URL with ``?live=1`` every few seconds: the answer is
a small JSON object of re-rendered regions. A poll is an ordinary short request, so an
open page never holds one of the server's threads (a server-sent-events stream would, for
as long as the page is open, and the nodes share those threads).
"""

from __future__ import annotations

from flask import Blueprint, Flask
from flask_wtf.csrf import CSRFProtect

from ..api.limits import LoginLimits

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
csrf = CSRFProtect()

#: Served on every dashboard answer: only this hub's own files, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def init_app(app: Flask) -> None:
    from . import auth, bulk, pages, pending, rollouts, sites  # noqa: F401 (their routes join bp)

    app.config.update(
        SESSION_COOKIE_NAME="dropsync_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Checked by the dashboard itself, after the login check (auth.py): the API
        # routes take bearer tokens, never cookies, so a forged cross-site post has no
        # credential to ride on there.
        WTF_CSRF_CHECK_DEFAULT=False,
        # The token lives as long as the session; the session has its own lifetime.
        WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    app.jinja_env.globals["csrf_token"] = stable_csrf_token
    app.extensions["dropsync.login_limits"] = LoginLimits(app.config)
    app.register_blueprint(bp)


def stable_csrf_token() -> str:
    """The page's CSRF token, signed once per session: Flask-WTF signs it anew (with the
    second) at every render, so a live region holding a form changed every second and
    could never answer 304. The token has no time limit (``WTF_CSRF_TIME_LIMIT``); a new
    login starts a new session, and with it a new token."""
    from flask import session
    from flask_wtf.csrf import generate_csrf, validate_csrf
    from wtforms import ValidationError

    signed = session.get("csrf_signed")
    if signed:
        try:
            validate_csrf(signed)
            return signed
        except ValidationError:
            pass
    signed = session["csrf_signed"] = generate_csrf()
    return signed
