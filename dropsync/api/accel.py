"""Answers that hand the bytes of an authorised download to nginx (``X-Accel-Redirect``).

With ``DOWNLOAD_ACCEL_PREFIX`` set, the hub checks the token, the manifest and the
version, and nginx sends the bytes (see ``dropsync.ops.nginx`` for its side).
"""

from __future__ import annotations

from flask import Response, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from ..sync.blobs import BlobInfo

OCTET_STREAM = "application/octet-stream"


def blob_path(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}"


def whole_file(prefix: str, sha256: str, size: int, headers: dict[str, str]) -> Response:
    """The blob, or the Range asked for, sent by nginx.

    A Range is checked here first, with the hub's own rule: exactly one satisfiable range
    or 416. nginx would answer several ranges as multipart and ignore an unparseable one
    (sending the whole file), which corrupts a resumed OTA image.
    """
    if "Range" in request.headers:
        asked = request.range
        if asked is None or len(asked.ranges) != 1 or asked.range_for_length(size) is None:
            raise RequestedRangeNotSatisfiable(length=size)
    return Response(status=200, mimetype=OCTET_STREAM, headers={
        **headers, "X-Accel-Redirect": f"{prefix}{blob_path(sha256)}"})


def chunk(prefix: str, blob: BlobInfo, index: int, headers: dict[str, str]) -> Response:
    """One chunk's bytes, named in the redirect: nginx answers 206 with Content-Range."""
    first, length = blob.chunk_span(index)
    return Response(status=200, mimetype=OCTET_STREAM, headers={
        **headers, "X-Accel-Redirect":
            f"{prefix}range/{first}-{first + length - 1}/{blob_path(blob.sha256)}"})
