"""Admin routes for packages, the staging folder and device uploads.

They live on the admin blueprint (``/api/v1/admin``, admin token), in their own module so
file sync and device administration can change independently.
"""

from __future__ import annotations

from flask import current_app, request

from ..fleet.devices import list_devices
from ..sync.packages import PackageCatalog
from ..sync.schemas import (
    PackageListQuerySchema,
    PackageListSchema,
    PackageStatusSchema,
    StagedSchema,
    StageQuerySchema,
    StagingReportSchema,
    UploadListQuerySchema,
    UploadListSchema,
    WithdrawnSchema,
)
from .accel import send_stored_file
from .admin import bp
from .context import current_hub
from .contract import contract
from .files import OCTET_STREAM


def with_progress(catalog: PackageCatalog, packages: list[dict]) -> list[dict]:
    """Packages with how far their target devices are, and who signed an image."""
    hub = current_hub()
    return [{**p, "signature": hub.firmware_images.signature_dict(p)}
            for p in catalog.with_progress(list_devices(hub.stores), packages)]


# -- packages --------------------------------------------------------------------------
@bp.get("/packages")
@contract(query=PackageListQuerySchema, response=PackageListSchema)
def list_packages(query):
    """List packages with their progress: how many target devices hold them."""
    catalog = current_hub().packages
    found = with_progress(catalog, catalog.list_packages(query.get("target")))
    return {"packages": found, "count": len(found)}


@bp.get("/packages/<package_id>")
@contract(response=PackageStatusSchema)
def show_package(package_id: str):
    """Show a package with each target device's sync status."""
    catalog = current_hub().packages
    return with_progress(catalog, [catalog.get(package_id)])[0]


@bp.delete("/packages/<package_id>")
@contract(response=WithdrawnSchema)
def withdraw_package(package_id: str):
    """Withdraw a package: its staged file is deleted and no manifest lists it."""
    package = current_hub().staging.withdraw(package_id)
    return {"withdrawn": package["id"], "target": package["target"], "path": package["path"]}


# -- staging ---------------------------------------------------------------------------
@bp.put("/staging/<target>/<path:path>")
@contract(query=StageQuerySchema, response=StagedSchema, raw_body=("application/octet-stream",),
          errors=(413,))
def stage_file(target: str, path: str, query):
    """Put a file into ``staging/<target>/<path>`` (the body is its bytes) and take it in
    as a package at once, exactly as if it had been dropped there."""
    return stage_request_body(target, path, query["source"], query.get("release"))


def stage_request_body(target: str, path: str, source: str, release: str | None = None) \
        -> dict:
    """The request body into the staging folder as ``target/path``, taken in at once (also
    the dashboard's upload): the package with its progress and whether it changed."""
    limit = current_app.config["STAGING_UPLOAD_MAX_BYTES"]
    request.max_content_length = limit  # replaces MAX_REQUEST_BYTES for this route
    hub = current_hub()
    package, changed = hub.staging.stage_stream(target, path, request.stream,
                                                source=source, max_bytes=limit,
                                                release=release)
    return {**with_progress(hub.packages, [package])[0], "changed": changed}


@bp.get("/staging")
@contract(response=StagingReportSchema)
def staging_report():
    """Problems in the staging folder (unknown targets, refused names and symlinks) and
    the watcher's state."""
    return current_hub().staging_report()


# -- device uploads --------------------------------------------------------------------
@bp.get("/uploads")
@contract(query=UploadListQuerySchema, response=UploadListSchema)
def list_uploads(query):
    """List the files devices have uploaded."""
    found = current_hub().uploads.list(query.get("device"))
    return {"uploads": found, "count": len(found)}


@bp.get("/uploads/<device_id>/<filename>")
@contract(produces=OCTET_STREAM, errors=(400,))  # 400: an unsafe file name
def download_upload(device_id: str, filename: str):
    """Download a file a device uploaded."""
    record, path = current_hub().uploads.get(device_id, filename)
    response = send_stored_file(path, etag=record["sha256"], download_name=record["name"],
                                as_attachment=True)
    response.headers["X-Content-SHA256"] = record["sha256"]
    return response
