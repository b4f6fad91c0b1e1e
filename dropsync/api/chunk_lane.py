"""A short way through for the chunk route, the hub's most frequent download.

A node fetching a file asks for it 4 KiB at a time. Through Flask every chunk paid for a
request context, URL matching, the hooks and a ``Response`` object: several times the
read and the write it is for. This WSGI wrapper answers a chunk GET that will succeed with
the same rules (the device's token, the failed-auth and per-device limits, the manifest and
version check), the same headers, the same liveness update, metrics and log line, and hands
the bytes to the server by path when it can (``dropsync.file_range``, see
``dropsync.bridge``). Anything else, any refusal or error included, goes to the app, which
answers it exactly as before: a request the lane leaves has changed nothing but, at most,
one more count of a per-device limit already used up.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from flask import Flask

from ..devices import authenticate_device
from ..errors import DropSyncError
from ..ops.requestlog import log as request_log
from . import accel
from .context import device_token_of
from .limits import credential_fingerprint

ENDPOINT = "files.download_chunk"
#: The route ``files.download_chunk`` answers (ASCII ids, as the hub issues them).
CHUNK_PATH = re.compile(r"/api/v1/files/download/([^/]+)/([^/]+)/([0-9]+)/([0-9]+)")
TICKET_ENDPOINT = "files.ticket_chunk"
#: A chunk by download ticket (``files.ticket_chunk``): what nginx asks on a cache miss.
TICKET_CHUNK_PATH = re.compile(
    r"/api/v1/files/t/([0-9]+)/([A-Za-z0-9_-]+)/([^/]+)/([^/]+)/([0-9]+)/([0-9]+)")
OCTET_STREAM = "application/octet-stream"


class ChunkLane:
    def __init__(self, app: Flask, wsgi_app: Callable):
        self.app = app
        self.wsgi_app = wsgi_app
        self.ready = False
        self.paths: dict[str, str] = {}  # blob paths, checked and built once per blob

    def setup(self) -> None:
        """What the app builds after this wrapper is installed: read on the first chunk."""
        app = self.app
        self.hub = app.extensions["dropsync"]
        self.metrics = app.extensions["dropsync.metrics"]
        limits = app.extensions["dropsync.limits"]
        self.limits = limits if limits.enabled and "files" in limits.guarded_blueprints \
            else None
        self.per_device = limits.per_device.get("files")
        self.accel_prefix = app.config["DOWNLOAD_ACCEL_PREFIX"]
        self.log_requests = app.config["REQUEST_LOG"]
        rules = {rule.endpoint: rule.rule for rule in app.url_map.iter_rules()}
        self.route, self.ticket_route = rules[ENDPOINT], rules[TICKET_ENDPOINT]
        self.ready = True

    def __call__(self, environ: dict[str, Any], start_response: Callable):
        if environ["REQUEST_METHOD"] == "GET" \
                and environ.get("CONTENT_LENGTH", "") in ("", "0") \
                and "HTTP_TRANSFER_ENCODING" not in environ:
            path = environ.get("PATH_INFO", "")
            found = CHUNK_PATH.fullmatch(path)
            if found is not None and found.string.isascii():
                answer = self.answer(environ, start_response, *found.groups())
                if answer is not None:
                    return answer
            elif path.startswith("/api/v1/files/t/"):
                found = TICKET_CHUNK_PATH.fullmatch(path)
                if found is not None and found.string.isascii():
                    expires, sig, *chunk = found.groups()
                    answer = self.answer(environ, start_response, *chunk,
                                         ticket=(int(expires), sig))
                    if answer is not None:
                        return answer
        return self.wsgi_app(environ, start_response)

    def answer(self, environ: dict[str, Any], start_response: Callable, device_id: str,
               package_id: str, version_text: str, index_text: str,
               ticket: tuple[int, str] | None = None):
        """The chunk, or None to leave the request to the app. With a download ``ticket``
        (expires, signature) that is checked too, and the bytes are always in the answer
        (nginx caches it for every device)."""
        started = time.perf_counter()
        if not self.ready:
            self.setup()
        address = environ.get("REMOTE_ADDR") or "unknown"
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        token_header = environ.get("HTTP_X_DEVICE_TOKEN", "")
        limits = self.limits
        if limits is not None and limits.failed_credential.exceeded(
                address, credential_fingerprint(authorization, token_header)):
            return None
        version, index = int(version_text), int(index_text)
        packages = self.hub.packages
        try:
            if ticket is not None:
                if packages.tickets is None:
                    return None
                packages.tickets.check(*ticket, device_id, package_id, version)
            device = authenticate_device(self.hub.stores, device_id,
                                         device_token_of(authorization, token_header))
            package = packages.authorize_download(device, package_id, version)
            blob = packages.blob_info(package)
            first, length = blob.chunk_span(index)
        except DropSyncError:
            return None
        if limits is not None and self.per_device is not None \
                and not self.per_device.count(device_id):
            return None  # the app counts it once more and answers 429
        self.hub.stores.liveness.update(device_id, last_seen=time.time(), ip=address)
        headers = {"X-Chunk-SHA256": blob.chunk_sha256(index), "X-Chunk-Index": str(index),
                   "X-Chunk-Count": str(blob.chunk_count), "X-Package-Version": str(version)}
        if self.accel_prefix and blob.size and ticket is None:  # nginx sends the bytes
            response = accel.chunk(self.accel_prefix, blob, index, headers)
            body = response(environ, start_response)
            length = 0
        else:
            send_range = environ.get("dropsync.file_range")
            body = send_range(self.blob_path(blob.sha256), first, first + length) \
                if send_range is not None else [self.hub.blobs.read_chunk(blob, index)]
            start_response("200 OK", [*headers.items(), ("Content-Type", OCTET_STREAM),
                                      ("Content-Length", str(length))])
        self.finished(device_id, address, started, length, ticket is not None)
        return body

    def blob_path(self, sha256: str) -> str:
        path = self.paths.get(sha256)
        if path is None:
            if len(self.paths) >= 1024:
                self.paths.clear()
            path = self.paths[sha256] = str(self.hub.blobs.path_of(sha256))
        return path

    def finished(self, device_id: str, address: str, started: float, length: int,
                 by_ticket: bool = False) -> None:
        """The metrics and log line ``ops.requestlog`` gives every request."""
        seconds = time.perf_counter() - started
        route, endpoint = (self.ticket_route, TICKET_ENDPOINT) if by_ticket \
            else (self.route, ENDPOINT)
        self.metrics.count_request("GET", route, endpoint, 200, seconds, length)
        if self.log_requests and request_log.isEnabledFor(logging.INFO):
            request_log.info("%s %s %d %.1fms device=%s client=%s", "GET", route, 200,
                             seconds * 1000, device_id, address)


def init_app(app: Flask) -> None:
    """Install before ``ops`` wraps the app for trusted proxies, so ``REMOTE_ADDR`` is
    already the device's when the lane reads it."""
    app.wsgi_app = ChunkLane(app, app.wsgi_app)
