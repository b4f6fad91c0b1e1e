"""``GET /health``: the one route anyone may call, for monitors and for people."""

from __future__ import annotations

from flask import Blueprint

from .. import __version__
from ..sync.schemas import HealthWithStagingSchema
from .context import current_hub
from .contract import contract
from .serving import on_loop

bp = Blueprint("health", __name__)


@bp.get("/health")
@on_loop
@contract(response=HealthWithStagingSchema)
def show():
    """The hub's state, for monitors and people; needs no credentials."""
    hub = current_hub()
    # Anyone may ask, so no paths: where the data lives is for the admin API
    # (system/stats, staging) to say.
    store = {k: v for k, v in hub.stores.state().items() if k != "data_dir"}
    staging = {k: v for k, v in hub.staging_report().items() if k != "staging_dir"}
    healthy = store["state"] == "ok" and staging["state"] == "ok"
    return {
        "status": "ok" if healthy else "degraded",
        "version": __version__,
        "uptime_s": round(hub.uptime_s(), 1),
        "store": store,
        "staging": staging,
    }
