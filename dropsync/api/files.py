"""Files API under ``/api/v1/files``: manifests, downloads, sync reports, device uploads.

Every route names a device id and needs that device's token. Downloads are limited to
what the device's manifest lists (403 otherwise) and to the current version of each file
(409 once replaced), so a device never mixes chunks of two versions.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, request

from ..errors import BadRequest, Forbidden, PayloadTooLarge
from ..schemas import DeletedSchema
from ..sync.packages import Manifest
from ..sync.schemas import (
    DeviceUploadListSchema,
    DeviceUploadSchema,
    ManifestSchema,
    SyncEntrySchema,
    SyncHistoryQuerySchema,
    SyncHistorySchema,
    SyncPackagesSchema,
    SyncReportSchema,
    UploadQuerySchema,
)
from ..sync.uploads import MULTIPART_OVERHEAD, READ_BUFFER
from . import accel
from .accel import send_stored_file
from .context import admit_device_request, current_hub
from .contract import contract
from .device_requests import Chunk, chunk_answer, nginx_sends_chunk
from .serving import lane, on_loop

bp = Blueprint("files", __name__, url_prefix="/api/v1/files")
bp.before_request(admit_device_request)

OCTET_STREAM = "application/octet-stream"


def manifest_headers(manifest: Manifest) -> dict[str, str]:
    return {"ETag": f'"{manifest.etag}"', "Cache-Control": "no-cache"}


# -- manifests -------------------------------------------------------------------------
@bp.get("/manifest/<device_id>")
@on_loop
@contract(response=ManifestSchema, other_responses={304: "Not modified (If-None-Match)"})
def manifest(device_id: str):
    """Every file this device should hold, with the version of the list.

    The union of the ``all`` folder, the device's groups and its own folder; for the same
    path the most specific wins. Send the ETag back in ``If-None-Match``: 304 while
    nothing changed. Built from memory; a poll that changes nothing writes nothing.
    """
    found = current_hub().packages.build_manifest(g.device)
    if request.if_none_match.contains(found.etag):
        return Response(status=304, headers=manifest_headers(found))
    return found.document(), manifest_headers(found)


@bp.get("/sync-packages/<device_id>")
@contract(response=SyncPackagesSchema)
def sync_packages(device_id: str):
    """The packages this device should hold (the manifest's files, with their origin)."""
    packages = current_hub().packages
    found = packages.build_manifest(g.device)
    listed = [{**packages.get(f["id"]), **f} for f in found.files]
    return {"device_id": device_id, "manifest_version": found.version, "packages": listed,
            "count": len(listed)}


# -- downloads -------------------------------------------------------------------------
@bp.get("/download/<device_id>/<package_id>/<int:version>")
@on_loop
@contract(produces=OCTET_STREAM, errors=(409, 416),
          other_responses={206: "Partial content (Range)",
                           304: "Not modified (If-None-Match with the SHA-256)"})
def download(device_id: str, package_id: str, version: int):
    """The whole file, or the byte range asked for with ``Range`` (RFC 7233).

    A valid range gets 206 with ``Content-Range``, an unsatisfiable one 416; never 200
    with the whole file. ``x-MD5`` carries the MD5 for the ESP8266 Update class.
    """
    return whole_download(package_id, version)


def whole_download(package_id: str, version: int) -> Response:
    hub = current_hub()
    package = hub.packages.authorize_download(g.device, package_id, version)
    headers = {"x-MD5": package["md5"], "X-Content-SHA256": package["sha256"],
               "X-Package-Version": str(package["version"])}
    accel_prefix = current_app.config["DOWNLOAD_ACCEL_PREFIX"]
    if accel_prefix:  # nginx serves the bytes (and the Range) from DATA_DIR/blobs/
        return accel.whole_file(accel_prefix, package["sha256"], package["size"], headers)
    response = send_stored_file(hub.blobs.path_of(package["sha256"]), etag=package["sha256"],
                                download_name=package["path"].rsplit("/", 1)[-1])
    response.headers.update(headers)
    return response


@bp.get("/download/<device_id>/<package_id>/<int:version>/<int:index>")
@lane("chunk")
@on_loop
@contract(produces=OCTET_STREAM, errors=(409,))
def download_chunk(device_id: str, package_id: str, version: int, index: int):
    """One chunk (``chunk_size`` bytes, the last may be shorter), its SHA-256 in
    ``X-Chunk-SHA256``: computed at ingest, never per request."""
    return chunk_response(chunk_answer(current_hub(), g.device, package_id, version, index),
                          ticketed=False)


def chunk_response(chunk: Chunk, *, ticketed: bool) -> Response:
    accel_prefix = current_app.config["DOWNLOAD_ACCEL_PREFIX"]
    if nginx_sends_chunk(accel_prefix, chunk, ticketed=ticketed):  # as a 206 from nginx
        return accel.chunk(accel_prefix, chunk.blob, chunk.index, chunk.headers)
    return Response(current_hub().blobs.read_chunk(chunk.blob, chunk.index),
                    mimetype=OCTET_STREAM, headers=chunk.headers)


# -- downloads by ticket (DOWNLOAD_TICKET_SECRET) ---------------------------------------
TICKET_ROUTE = "/t/<int:expires>/<sig>/<device_id>/<package_id>/<int:version>"


def check_ticket(expires: int, sig: str, device_id: str, package_id: str,
                 version: int) -> None:
    tickets = current_hub().packages.tickets
    if tickets is None:
        raise Forbidden("this hub issues no download tickets (DOWNLOAD_TICKET_SECRET is "
                        "not set); fetch the manifest for a url", code="ticket_invalid")
    tickets.check(expires, sig, device_id, package_id, version)


@bp.get(TICKET_ROUTE)
@on_loop
@contract(produces=OCTET_STREAM, errors=(409, 410, 416),
          other_responses={206: "Partial content (Range)",
                           304: "Not modified (If-None-Match with the SHA-256)"})
def ticket_download(expires: int, sig: str, device_id: str, package_id: str, version: int):
    """The whole file (or a ``Range``) at the url a manifest gives when the hub issues
    download tickets: the ticket (403 ``ticket_invalid``, 410 ``ticket_expired``) and
    the device's token are both checked."""
    check_ticket(expires, sig, device_id, package_id, version)
    return whole_download(package_id, version)


@bp.get(TICKET_ROUTE + "/<int:index>")
@lane("ticket_chunk")
@on_loop
@contract(produces=OCTET_STREAM, errors=(409, 410))
def ticket_chunk(expires: int, sig: str, device_id: str, package_id: str, version: int,
                 index: int):
    """One chunk at the url a manifest gives with a download ticket: the ticket and the
    token checked, the bytes always in the answer itself (never ``X-Accel-Redirect``),
    so nginx can keep the answer in its cache for every device."""
    check_ticket(expires, sig, device_id, package_id, version)
    return chunk_response(chunk_answer(current_hub(), g.device, package_id, version, index),
                          ticketed=True)


# -- sync state ------------------------------------------------------------------------
@bp.post("/sync-status/<device_id>")
@contract(body=SyncReportSchema, response=SyncEntrySchema, status=201, errors=(409,))
def report_sync_status(device_id: str, body):
    """Report progress on a package: downloading (with bytes received), verified,
    applied, or failed (with a reason). Kept in the sync history."""
    return current_hub().packages.record_sync_report(g.device, body)


@bp.get("/sync-history/<device_id>")
@contract(query=SyncHistoryQuerySchema, response=SyncHistorySchema)
def sync_history(device_id: str, query):
    """This device's sync reports, newest first."""
    found = current_hub().packages.sync_history(device_id, query["limit"])
    return {"device_id": device_id, "history": found, "count": len(found)}


# -- device uploads --------------------------------------------------------------------
@bp.post("/upload/<device_id>")
@contract(query=UploadQuerySchema, response=DeviceUploadSchema, status=201, errors=(413, 415),
          raw_body=(OCTET_STREAM, "multipart/form-data"))
def upload(device_id: str, query):
    """Upload a file: a ``multipart/form-data`` file part, or the raw body with
    ``?filename=``. Streamed to disk and stored whole or not at all; answers its SHA-256.
    """
    uploads = current_hub().uploads
    multipart = request.mimetype == "multipart/form-data"
    limit = uploads.max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"an upload may be at most {uploads.max_bytes} bytes "
                              "(UPLOAD_MAX_BYTES)")
    request.max_content_length = limit  # replaces MAX_REQUEST_BYTES for this route
    if multipart:
        boundary = request.mimetype_params.get("boundary")
        if not boundary:
            raise BadRequest("multipart body without a boundary", code="invalid_multipart")
        return uploads.receive_multipart(device_id, request.stream.read, boundary.encode())
    name = query.get("filename")
    if not name:
        raise BadRequest("name the file: ?filename=<name> (or send a multipart form)",
                         code="no_filename")
    stream = request.stream  # receive() checks the name and type before reading it
    return uploads.receive(device_id, name, iter(lambda: stream.read(READ_BUFFER), b""),
                           expected_size=request.content_length)


@bp.get("/list/<device_id>")
@contract(response=DeviceUploadListSchema)
def list_uploads(device_id: str):
    """The files this device has uploaded."""
    found = current_hub().uploads.list(device_id)
    return {"uploads": found, "count": len(found)}


@bp.delete("/files/<device_id>/<filename>")
@contract(response=DeletedSchema, errors=(400,))  # 400: an unsafe file name
def delete_upload(device_id: str, filename: str):
    """Delete one of this device's uploads."""
    current_hub().uploads.delete(device_id, filename)
    return {"deleted": filename}
