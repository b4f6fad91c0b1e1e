"""``GET /health``: the one route anyone may call, for monitors and for people."""

from __future__ import annotations

from flask import Blueprint, jsonify

from .. import __version__
from .context import current_hub

bp = Blueprint("health", __name__)


@bp.get("/health")
def show():
    hub = current_hub()
    store = hub.stores.state()
    return jsonify({
        "status": "ok" if store["state"] == "ok" else "degraded",
        "version": __version__,
        "uptime_s": round(hub.uptime_s(), 1),
        "store": store,
    })
