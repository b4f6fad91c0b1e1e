"""Device API under ``/api/v1/device``: every route names a device id and needs its token."""

from __future__ import annotations

import time

from flask import Blueprint, g, request

from ..clock import now_iso
from ..devices import authenticate_device
from ..schemas import PingSchema
from .context import current_hub, device_token
from .contract import contract

bp = Blueprint("device", __name__, url_prefix="/api/v1/device")


@bp.before_request
def require_device_token():
    """Every device route: the token must be that device's own (401 none/bad, 403 other)."""
    device_id = (request.view_args or {}).get("device_id", "")
    stores = current_hub().stores
    g.device = authenticate_device(stores, device_id, device_token())
    stores.liveness.update(device_id, last_seen=time.time(), ip=request.remote_addr)


@bp.get("/ping/<device_id>")
@contract(response=PingSchema)
def ping(device_id: str):
    """Check the hub is reachable and the token works."""
    return {"status": "ok", "device_id": device_id, "server_time": now_iso()}
