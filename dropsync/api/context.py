"""Access to the running hub and its credentials from inside a request."""

from __future__ import annotations

import time

from flask import current_app, g, request

from ..fleet.devices import authenticate_device
from ..hub import Hub
from .limits import client_address


def current_hub() -> Hub:
    return current_app.extensions["dropsync"]


def bearer_token() -> str | None:
    return bearer_of(request.headers.get("Authorization", ""))


def bearer_of(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def device_token() -> str | None:
    return device_token_of(request.headers.get("Authorization", ""),
                           request.headers.get("X-Device-Token", ""))


def device_token_of(authorization: str, device_token_header: str) -> str | None:
    """Devices may send their token as a bearer token or in ``X-Device-Token``."""
    return bearer_of(authorization) or device_token_header.strip() or None


def require_device_token() -> None:
    """``before_request`` of every device-facing blueprint: each route names a device id,
    and the token must be that device's own (401 none or bad, 403 another device's).
    A device that got through is seen now, from this address."""
    device_id = (request.view_args or {}).get("device_id", "")
    stores = current_hub().stores
    g.device = authenticate_device(stores, device_id, device_token())
    stores.liveness.update(device_id, last_seen=time.time(), ip=client_address())
