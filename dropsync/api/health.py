"""``GET /health``: the one route anyone may call, for monitors and for people."""

from __future__ import annotations

from flask import Blueprint

from .. import __version__
from ..schemas import HealthSchema
from .context import current_hub
from .contract import contract

bp = Blueprint("health", __name__)


@bp.get("/health")
@contract(response=HealthSchema)
def show():
    """The hub's state, for monitors and people; needs no credentials."""
    hub = current_hub()
    store = hub.stores.state()
    return {
        "status": "ok" if store["state"] == "ok" else "degraded",
        "version": __version__,
        "uptime_s": round(hub.uptime_s(), 1),
        "store": store,
    }
