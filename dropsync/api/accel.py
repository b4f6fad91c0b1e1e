"""Answers that carry a file's bytes: handed to nginx (``X-Accel-Redirect``), or sent
from disk with Range and If-None-Match (``send_stored_file``), for every audience.

With ``DOWNLOAD_ACCEL_PREFIX`` set, the hub checks the token, the manifest and the
version, and nginx sends the bytes (see ``dropsync.ops.nginx`` for its side).
"""

from __future__ import annotations

import werkzeug.utils
from flask import Response, current_app, request
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


def send_stored_file(path, *, etag: str, download_name: str,
                     as_attachment: bool = False) -> Response:
    """A file streamed from disk, answering Range (206/416) and If-None-Match (304).

    Without a Range the WSGI server's file wrapper sends it (gunicorn: ``sendfile``;
    granian: from the path). With one, a wrapper that cannot seek is left out (gunicorn's:
    werkzeug would read and throw away every byte before the range, an 8 MiB blob served
    4 KiB ranges at ~150/s that way, ~1,300/s seeking); granian's sends the range itself.
    """
    environ = request.environ
    if "HTTP_RANGE" in environ and not hasattr(environ.get("wsgi.file_wrapper"), "seekable"):
        environ = {k: v for k, v in environ.items() if k != "wsgi.file_wrapper"}
    return werkzeug.utils.send_file(path, environ, mimetype=OCTET_STREAM, conditional=True,
                                    etag=etag, download_name=download_name,
                                    as_attachment=as_attachment,
                                    response_class=current_app.response_class)
