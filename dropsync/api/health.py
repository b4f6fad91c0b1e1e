"""``GET /health``: the one route anyone may call, for monitors and for people."""

from __future__ import annotations

import shutil

from flask import Blueprint, jsonify

from .. import __version__
from .context import current_hub

bp = Blueprint("health", __name__)


@bp.get("/health")
def show():
    hub = current_hub()
    stores = hub.stores
    disk = shutil.disk_usage(stores.data_dir)
    return jsonify({
        "status": "ok",
        "version": __version__,
        "uptime_s": round(hub.uptime_s(), 1),
        "store": {
            "state": "ok",
            "data_dir": str(stores.data_dir),
            "devices": len(stores.devices),
            "history": {name: len(log) for name, log in stores.history.items()},
            "disk_free_bytes": disk.free,
        },
    })
