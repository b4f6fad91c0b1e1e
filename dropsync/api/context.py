"""Access to the running hub and its credentials from inside a request."""

from __future__ import annotations

from flask import current_app, request

from ..hub import Hub


def current_hub() -> Hub:
    return current_app.extensions["dropsync"]


def bearer_token() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def device_token() -> str | None:
    """Devices may send their token as a bearer token or in ``X-Device-Token``."""
    return bearer_token() or request.headers.get("X-Device-Token", "").strip() or None
