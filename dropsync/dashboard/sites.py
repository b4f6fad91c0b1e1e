"""The Sites page of a central hub: each site's newest export, silent ones first.

Its own module and templates (``sites.html``, ``_sites.html``); it reads what the hub's
sites link keeps (``dropsync/sites/central.py``), the same as ``GET /api/v1/admin/sites``
and ``dropsync sites``. Like every page it refreshes its live region every few seconds;
a client that asks for JSON gets the sites as JSON.
"""

from __future__ import annotations

from flask import jsonify, request

from ..api.context import current_hub
from . import bp
from .auth import wants_json
from .pages import render_page


@bp.get("/sites")
def sites():
    found = sorted(current_hub().sites.overview(), key=lambda s: (not s["silent"], s["name"]))
    if wants_json() and request.args.get("live") != "1":
        return jsonify({"sites": found, "count": len(found)})
    return render_page("dashboard/sites.html", {"sites-live": "dashboard/_sites.html"},
                       sites=found)
