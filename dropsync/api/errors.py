"""One JSON error shape for every error: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from ..errors import DropSyncError

log = logging.getLogger("dropsync")

#: Headers an HTTP error must keep (405's Allow, 429's Retry-After...); the body is ours.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Content-Range")


def error_response(status: int, code: str, message: str, details=None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    return response


def handle_dropsync_error(exc: DropSyncError) -> Response:
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, exc.details)


def handle_http_exception(exc: HTTPException):
    if exc.code is None or exc.code < 400:  # routing redirects are not errors
        return exc
    if exc.response is not None:  # already answered in our shape (the rate limiter's 429)
        return exc.response
    code = (exc.name or "error").lower().replace(" ", "_").replace("'", "")
    response = error_response(exc.code, code, exc.description or exc.name)
    for name, value in exc.get_headers():
        if name in KEPT_HEADERS:
            response.headers[name] = value
    return response


def handle_unexpected(exc: Exception) -> Response:
    log.exception("unexpected error")
    return error_response(500, "internal_error",
                          "the hub hit an unexpected error; it has been logged")


def init_app(app: Flask) -> None:
    app.register_error_handler(DropSyncError, handle_dropsync_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
