"""``GET /api/v1/admin/sites``: every site's newest export, as the central hub read it
(``dropsync sites`` and the dashboard's Sites page show the same)."""

from __future__ import annotations

from flask import current_app
from marshmallow import Schema, fields

from .admin import bp as admin_bp
from .contract import contract


class SiteSchema(Schema):
    name = fields.String(required=True)
    age_s = fields.Float(allow_none=True, metadata={"description": "seconds since its "
                                                    "newest export was written"})
    silent = fields.Boolean(metadata={"description": "no export for SITES_SILENT_AFTER_S"})
    last_export_at = fields.String(allow_none=True)
    last_seq = fields.Integer()
    segments_read = fields.Integer()
    missed = fields.Integer(metadata={"description": "segments pruned before they came"})
    fleet = fields.Dict()
    packages = fields.List(fields.Dict())
    failed_packages = fields.Integer()
    failures = fields.List(fields.Dict())
    warnings = fields.List(fields.Dict())
    activity = fields.List(fields.Dict())
    commands = fields.List(fields.Dict())
    problems = fields.List(fields.String())


class SiteListSchema(Schema):
    sites = fields.List(fields.Nested(SiteSchema), required=True)
    count = fields.Integer(required=True)


@admin_bp.get("/sites")
@contract(response=SiteListSchema)
def list_sites():
    """Sites of a central hub: each one's export age, fleet, packages, failures and the
    commands sent to it (empty unless ``dropsync central add-site`` was run)."""
    found = current_app.extensions["dropsync"].sites.overview()
    return {"sites": found, "count": len(found)}
