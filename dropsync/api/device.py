"""Device API under ``/api/v1/device``: every route names a device id and needs its token."""

from __future__ import annotations

from flask import Blueprint

from ..clock import now_iso
from ..schemas import PingSchema
from .context import require_device_token
from .contract import contract

bp = Blueprint("device", __name__, url_prefix="/api/v1/device")
bp.before_request(require_device_token)


@bp.get("/ping/<device_id>")
@contract(response=PingSchema)
def ping(device_id: str):
    """Check the hub is reachable and the token works."""
    return {"status": "ok", "device_id": device_id, "server_time": now_iso()}
