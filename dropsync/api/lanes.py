"""Short ways through for the two requests a fleet makes most: the poll and the chunk.

A node polls every few seconds and fetches a file 4 KiB at a time. Through Flask each of
those paid for a request context, URL matching, the hooks, the contract and a ``Response``
object: several times the work it is for (a poll's profile put Flask and werkzeug at half
its time). This WSGI wrapper answers a poll, or a chunk GET that will succeed, with the same
rules (the device's token, the failed-auth and per-device limits; for a chunk the manifest
and version check), the same answer byte for byte, the same liveness update, metrics and
log line; a chunk's bytes go to the server by path when it can (``dropsync.file_range``,
see ``dropsync.bridge``). Anything else, any refusal or error included, goes to the app,
which answers it exactly as before: a request a lane leaves has changed nothing but, at
most, one more count of a per-device limit already used up.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from marshmallow import ValidationError

from ..errors import DropSyncError
from ..fleet.devices import authenticate_device
from ..ops.requestlog import log as request_log
from . import accel
from .context import device_token_of
from .limits import credential_fingerprint

CHUNK_ENDPOINT = "files.download_chunk"
TICKET_CHUNK_ENDPOINT = "files.ticket_chunk"
POLL_ENDPOINT = "device.poll_commands"
#: The routes of those endpoints (ASCII ids, as the hub issues them).
CHUNK_PATH = re.compile(r"/api/v1/files/download/([^/]+)/([^/]+)/([0-9]+)/([0-9]+)")
#: A chunk by download ticket (dropsync.sync.tickets): what nginx asks on a cache miss.
TICKET_CHUNK_PATH = re.compile(
    r"/api/v1/files/t/([0-9]+)/([A-Za-z0-9_-]+)/([^/]+)/([^/]+)/([0-9]+)/([0-9]+)")
POLL_PATH = re.compile(r"/api/v1/device/commands/([^/]+)")
#: The one query a poll may carry here (``limit``); any other goes to the app.
POLL_QUERY = re.compile(r"limit=([0-9]{1,3})")
OCTET_STREAM = "application/octet-stream"


class DeviceLanes:
    def __init__(self, app: Flask, wsgi_app: Callable):
        self.app = app
        self.wsgi_app = wsgi_app
        self.ready = False
        self.paths: dict[str, str] = {}  # blob paths, checked and built once per blob

    def setup(self) -> None:
        """What the app builds after this wrapper is installed: read on the first request."""
        app = self.app
        self.hub = app.extensions["dropsync"]
        self.metrics = app.extensions["dropsync.metrics"]
        limits = app.extensions["dropsync.limits"]
        self.limits = limits if limits.enabled else None
        self.per_device = {blueprint: limits.per_device.get(blueprint)
                           if blueprint in limits.guarded_blueprints else None
                           for blueprint in ("files", "device")}
        self.accel_prefix = app.config["DOWNLOAD_ACCEL_PREFIX"]
        self.log_requests = app.config["REQUEST_LOG"]
        self.routes = {rule.endpoint: rule.rule for rule in app.url_map.iter_rules()}
        poll = app.view_functions[POLL_ENDPOINT].contract
        self.poll_query, self.poll_response = poll.query, poll.response
        self.poll_default_limit = poll.query.load({})["limit"]
        provider = app.json
        # The app's JSON answers, as app.json.response writes them (compact unless debug).
        self.encoder = None if provider.compact is False or (
            provider.compact is None and app.debug) else json.JSONEncoder(
            default=provider.default, ensure_ascii=provider.ensure_ascii,
            sort_keys=provider.sort_keys, separators=(",", ":"))
        self.ready = True

    def __call__(self, environ: dict[str, Any], start_response: Callable):
        if environ["REQUEST_METHOD"] == "GET" \
                and environ.get("CONTENT_LENGTH", "") in ("", "0") \
                and "HTTP_TRANSFER_ENCODING" not in environ:
            path = environ.get("PATH_INFO", "")
            if path.isascii():
                if not self.ready:
                    self.setup()
                answer = None
                if (found := POLL_PATH.fullmatch(path)) is not None:
                    answer = self.poll(environ, start_response, found.group(1))
                elif (found := CHUNK_PATH.fullmatch(path)) is not None:
                    answer = self.chunk(environ, start_response, *found.groups())
                elif path.startswith("/api/v1/files/t/") \
                        and (found := TICKET_CHUNK_PATH.fullmatch(path)) is not None:
                    expires, sig, *chunk = found.groups()
                    answer = self.chunk(environ, start_response, *chunk,
                                        ticket=(int(expires), sig))
                if answer is not None:
                    return answer
        return self.wsgi_app(environ, start_response)

    def authenticated(self, environ: dict[str, Any], device_id: str, blueprint: str):
        """The device whose token this is, or None for the app to answer (and count)."""
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        token_header = environ.get("HTTP_X_DEVICE_TOKEN", "")
        limits = self.limits
        if limits is not None and blueprint in limits.guarded_blueprints \
                and limits.failed_credential.exceeded(
                    environ.get("REMOTE_ADDR") or "unknown",
                    credential_fingerprint(authorization, token_header)):
            return None
        try:
            return authenticate_device(self.hub.stores, device_id,
                                       device_token_of(authorization, token_header))
        except DropSyncError:
            return None

    def within_limit(self, device_id: str, blueprint: str) -> bool:
        """Counts the request against the device's limit; False: the app counts it once
        more and answers 429."""
        per_device = self.per_device[blueprint]
        return self.limits is None or per_device is None or per_device.count(device_id)

    def poll(self, environ: dict[str, Any], start_response: Callable, device_id: str):
        """The poll, or None to leave the request to the app."""
        started = time.perf_counter()
        query = environ.get("QUERY_STRING", "")
        if not query:
            limit = self.poll_default_limit
        elif (found := POLL_QUERY.fullmatch(query)) is not None:
            try:
                limit = self.poll_query.load({"limit": found.group(1)})["limit"]
            except ValidationError:
                return None
        else:
            return None
        device = self.authenticated(environ, device_id, "device")
        if device is None or not self.within_limit(device_id, "device"):
            return None
        hub = self.hub
        address = environ.get("REMOTE_ADDR") or "unknown"
        hub.stores.liveness.update(device_id, last_seen=time.time(), ip=address)
        # From here on the poll is answered here: its commands are leased.
        handed = hub.commands.lease_pending_commands(device_id, limit)
        poll = {"commands": [], "next_poll_s": hub.pacing.next_poll_s(device),
                "server_time": int(time.time())}
        if handed:  # shaped by the contract's schema, as the app does; [] needs no shaping
            poll = self.poll_response.dump({**poll, "commands": handed})
        if self.encoder is not None:
            body = (self.encoder.encode(poll) + "\n").encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
        else:
            answer = self.app.json.response(poll)
            body = answer.get_data()
            start_response("200 OK", answer.headers.to_wsgi_list())
        self.finished(POLL_ENDPOINT, device_id, address, started, len(body))
        return [body]

    def chunk(self, environ: dict[str, Any], start_response: Callable, device_id: str,
              package_id: str, version_text: str, index_text: str,
              ticket: tuple[int, str] | None = None):
        """The chunk, or None to leave the request to the app. With a download ``ticket``
        (expires, signature) that is checked too, and the bytes are always in the answer
        (nginx caches it for every device)."""
        started = time.perf_counter()
        version, index = int(version_text), int(index_text)
        if ticket is not None:
            tickets = self.hub.packages.tickets
            try:
                if tickets is None:
                    return None
                tickets.check(*ticket, device_id, package_id, version)
            except DropSyncError:
                return None
        device = self.authenticated(environ, device_id, "files")
        if device is None:
            return None
        packages = self.hub.packages
        try:
            package = packages.authorize_download(device, package_id, version)
            blob = packages.blob_info(package)
            first, length = blob.chunk_span(index)
        except DropSyncError:
            return None
        if not self.within_limit(device_id, "files"):
            return None
        address = environ.get("REMOTE_ADDR") or "unknown"
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
        self.finished(CHUNK_ENDPOINT if ticket is None else TICKET_CHUNK_ENDPOINT, device_id,
                      address, started, length)
        return body

    def blob_path(self, sha256: str) -> str:
        path = self.paths.get(sha256)
        if path is None:
            if len(self.paths) >= 1024:
                self.paths.clear()
            path = self.paths[sha256] = str(self.hub.blobs.path_of(sha256))
        return path

    def finished(self, endpoint: str, device_id: str, address: str, started: float,
                 length: int) -> None:
        """The metrics and log line ``ops.requestlog`` gives every request."""
        seconds = time.perf_counter() - started
        route = self.routes[endpoint]
        self.metrics.count_request("GET", route, endpoint, 200, seconds, length)
        if self.log_requests and request_log.isEnabledFor(logging.INFO):
            request_log.info("%s %s %d %.1fms device=%s client=%s", "GET", route, 200,
                             seconds * 1000, device_id, address)


def init_app(app: Flask) -> None:
    """Install before ``ops`` wraps the app for trusted proxies, so ``REMOTE_ADDR`` is
    already the device's when a lane reads it."""
    app.wsgi_app = DeviceLanes(app, app.wsgi_app)
