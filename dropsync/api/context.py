"""Access to the running hub and its credentials from inside a request."""

from __future__ import annotations

from flask import current_app, g, request

from ..hub import Hub
from .device_requests import Caller, DeviceGate, bearer_of, device_token_of


def current_hub() -> Hub:
    return current_app.extensions["dropsync"]


def bearer_token() -> str | None:
    return bearer_of(request.headers.get("Authorization", ""))


def device_token() -> str | None:
    return device_token_of(request.headers.get("Authorization", ""),
                           request.headers.get("X-Device-Token", ""))


def admit_device_request() -> None:
    """``before_request`` of the device and files blueprints: every route names a device
    id, and ``DeviceGate.admit`` decides (the lanes call it too)."""
    admit(basic=False)


def admit_updater_request() -> None:
    """``before_request`` of the stock updaters' route: the same, and HTTP Basic (user =
    the device id, password = its token) counts as the device's token."""
    admit(basic=True)


def admit(*, basic: bool) -> None:
    gate: DeviceGate = current_app.extensions["dropsync.gate"]
    g.device = gate.admit(request.blueprint or "", (request.view_args or {}).get(
        "device_id", ""), Caller.of(request.environ), basic=basic)
