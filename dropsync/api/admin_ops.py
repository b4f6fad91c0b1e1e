"""Operations routes for admins: ``/metrics`` (Prometheus) and backups.

``POST /api/v1/admin/backup`` joins the admin blueprint; ``/metrics`` has a blueprint of
its own (Prometheus expects that path) behind the same admin-token check.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..ops.backup import BackupArchive
from .admin import bp as admin_bp
from .admin import require_admin
from .contract import contract

TAR = "application/x-tar"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

bp = Blueprint("metrics", __name__)
bp.before_request(require_admin)


@bp.get("/metrics")
@contract(produces="text/plain")
def metrics():
    """Prometheus metrics: requests by route and status, poll latency, devices and
    commands by state, bytes served, ingest and store-write latency, free disk."""
    exposition = current_app.extensions["dropsync.metrics"].exposition()
    return Response(exposition, content_type=PROMETHEUS_TEXT)


@admin_bp.post("/backup")
@contract(produces=TAR, errors=(409,))
def backup():
    """A consistent snapshot of the data directory, streamed as an uncompressed tar.

    Every store is held still for the instant it takes to link its files into a snapshot;
    the bytes then stream while the hub carries on. ``X-Backup-Size`` tells the size to
    expect. One backup at a time (409 while one runs). ``dropsync backup`` gzips it.
    """
    snapshot = current_app.extensions["dropsync.snapshots"].take()
    archive = BackupArchive(snapshot, current_app.config.get("CONFIG_FILE"))
    return Response(archive, mimetype=TAR, headers={
        "X-Backup-Size": str(archive.size), "X-Backup-Files": str(len(snapshot.files)),
        "Content-Disposition": "attachment; filename=dropsync-backup.tar"})
