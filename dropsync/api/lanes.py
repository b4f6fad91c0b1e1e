"""Short ways through for the requests a fleet makes most: the poll, the chunk, the
heartbeat.

A node polls every few seconds, fetches files a chunk at a time and reports a heartbeat.
Through Flask each of those paid for a request context, the hooks, the contract and a
``Response`` object: several times the work it is for. A view marked ``@lane(name)``
(``serving.py``) has its common case answered here instead, by the method of that name,
with the view's own rules (``device_requests``: admission, the answer, the chunk
headers, JSON) and its own contract's schemas, and the same metrics and log line
(``ops.requestlog.note_request``); a chunk's bytes go to the server by path when it can
(``dropsync.file_range``, see ``dropsync.bridge``).

Routes come from the app's URL map, so a lane answers exactly the requests its view
would. Anything a lane is not sure of (a refusal, an error, an unusual query or body)
goes to the app, which answers it exactly as it always does: a request a lane leaves
has changed nothing but, at most, one more count of a per-device limit already used up.
The lanes run only the hooks ``KNOWN_HOOKS`` names (through the gate and the request
log); ``check_hooks`` refuses, at start, any other hook on a lane-served blueprint.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from marshmallow import ValidationError

from ..errors import DropSyncError
from ..ops.requestlog import note_request
from . import accel
from .device_requests import (
    Caller,
    chunk_answer,
    heartbeat_answer,
    json_bytes,
    nginx_sends_chunk,
    poll_answer,
)
from .parsing import is_json, load_json_body
from .serving import MarkedRoutes, lane_of

OCTET_STREAM = "application/octet-stream"
#: The most a poll may ask for in its query (``?limit=N``); anything else goes to the app.
POLL_QUERY_PREFIX = "limit="


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
        self.gate = app.extensions["dropsync.gate"]
        self.metrics = app.extensions["dropsync.metrics"]
        self.accel_prefix = app.config["DOWNLOAD_ACCEL_PREFIX"]
        self.log_requests = app.config["REQUEST_LOG"]
        self.max_body = app.config["MAX_REQUEST_BYTES"]
        self.routes = MarkedRoutes(app)
        #: endpoint -> (this lane's method, the view's route, its contract, its blueprint)
        self.lanes: dict[str, tuple[Callable, str, Any, str]] = {}
        for rule in app.url_map.iter_rules():
            view = app.view_functions[rule.endpoint]
            name = lane_of(view)
            if name is not None:
                self.lanes[rule.endpoint] = (getattr(self, name), rule.rule, view.contract,
                                             rule.endpoint.partition(".")[0])
        poll = app.view_functions[next(e for e, lane in self.lanes.items()
                                       if lane[0] == self.poll)].contract
        #: A poll's limit when it names none: the contract's own default, loaded once.
        self.poll_default_limit = poll.query.load({})["limit"]
        self.ready = True

    def __call__(self, environ: dict[str, Any], start_response: Callable):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        if method in ("GET", "POST") and path.isascii():
            if not self.ready:
                self.setup()
            route = self.routes.match(method, path)
            found = self.lanes.get(route[0]) if route is not None else None
            if found is not None:
                endpoint, args = route[0], route[1]
                handler, route, contract, blueprint = found
                started = time.perf_counter()
                answer = handler(environ, args, contract, blueprint)
                if answer is not None:
                    status, headers, body, length = answer
                    start_response(status, headers)
                    device_id = args["device_id"]
                    note_request(self.metrics, self.log_requests, method, route, endpoint,
                                 int(status[:3]), time.perf_counter() - started, length,
                                 device_id, environ.get("REMOTE_ADDR") or "unknown")
                    return body
        return self.wsgi_app(environ, start_response)

    def admitted(self, environ: dict[str, Any], blueprint: str, device_id: str):
        """The device, or None for the app to answer (and count) the refusal."""
        try:
            return self.gate.admit(blueprint, device_id, Caller.of(environ))
        except Exception:  # noqa: BLE001 (a refusal of any kind: the app answers it)
            return None

    def json_answer(self, data: Any) -> tuple[str, list, list[bytes], int]:
        body = json_bytes(self.app.json, data)
        return ("200 OK", [("Content-Type", "application/json"),
                           ("Content-Length", str(len(body)))], [body], len(body))

    # -- the lanes ----------------------------------------------------------------------
    def poll(self, environ, args, contract, blueprint):
        """The poll, or None to leave the request to the app."""
        if environ.get("CONTENT_LENGTH", "") not in ("", "0") \
                or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        query = environ.get("QUERY_STRING", "")
        if query and not query.startswith(POLL_QUERY_PREFIX):
            return None
        if not query:
            limit = self.poll_default_limit
        else:
            try:  # through the contract's own query schema
                limit = contract.query.load({"limit": query[len(POLL_QUERY_PREFIX):]})["limit"]
            except ValidationError:
                return None
        device = self.admitted(environ, blueprint, args["device_id"])
        if device is None:
            return None
        # From here on the poll is answered here: its commands are leased.
        poll = poll_answer(self.hub, device, limit)
        if poll["commands"]:  # shaped by the contract's schema; [] needs no shaping
            poll = contract.response.dump(poll)
        return self.json_answer(poll)

    def heartbeat(self, environ, args, contract, blueprint):
        """The heartbeat (a JSON body of a declared length), or None for the app."""
        declared = environ.get("CONTENT_LENGTH", "")
        if not declared.isdigit() or int(declared) > self.max_body \
                or not is_json(environ.get("CONTENT_TYPE", "").partition(";")[0].strip()):
            return None
        raw = environ["wsgi.input"].read(int(declared))
        environ["wsgi.input"] = io.BytesIO(raw)  # for the app, if it answers after all
        device = self.admitted(environ, blueprint, args["device_id"])
        if device is None:
            return None
        try:
            body = load_json_body(raw, contract.body)
        except DropSyncError:
            return None
        return self.json_answer(contract.response.dump(
            heartbeat_answer(self.hub, device, body)))

    def chunk(self, environ, args, contract, blueprint, ticketed: bool = False):
        """The chunk, or None to leave the request to the app."""
        device = self.admitted(environ, blueprint, args["device_id"])
        if device is None:
            return None
        try:
            chunk = chunk_answer(self.hub, device, args["package_id"], args["version"],
                                 args["index"])
        except DropSyncError:
            return None
        if nginx_sends_chunk(self.accel_prefix, chunk, ticketed=ticketed):
            captured: list = []
            body = accel.chunk(self.accel_prefix, chunk.blob, chunk.index, chunk.headers)(
                environ, lambda status, headers: captured.extend((status, headers)))
            return captured[0], captured[1], body, 0
        send_range = environ.get("dropsync.file_range")
        body = send_range(self.blob_path(chunk.blob.sha256), chunk.first,
                          chunk.first + chunk.length) if send_range is not None \
            else [self.hub.blobs.read_chunk(chunk.blob, chunk.index)]
        return ("200 OK", [*chunk.headers.items(), ("Content-Type", OCTET_STREAM),
                           ("Content-Length", str(chunk.length))], body, chunk.length)

    def ticket_chunk(self, environ, args, contract, blueprint):
        """A chunk by download ticket (what nginx asks on a cache miss): the ticket is
        checked too, and the bytes are always in the answer (nginx caches it)."""
        tickets = self.hub.packages.tickets
        if environ["REQUEST_METHOD"] != "GET" or tickets is None:
            return None
        try:
            tickets.check(args["expires"], args["sig"], args["device_id"],
                          args["package_id"], args["version"])
        except DropSyncError:
            return None
        return self.chunk(environ, args, contract, blueprint, ticketed=True)

    def blob_path(self, sha256: str) -> str:
        path = self.paths.get(sha256)
        if path is None:
            if len(self.paths) >= 1024:
                self.paths.clear()
            path = self.paths[sha256] = str(self.hub.blobs.path_of(sha256))
        return path


#: The hooks the lanes account for: what they do is in ``DeviceGate.admit`` (auth,
#: limits, liveness) and ``note_request`` (the request log and metrics), by name.
KNOWN_HOOKS = frozenset({
    "RequestObserver.start", "RequestObserver.finish", "RateLimits.check",
    "RateLimits.count_refusal", "admit_device_request",
})


#: Flask-WTF's app-wide hook; with ``WTF_CSRF_CHECK_DEFAULT`` off it checks nothing.
CSRF_HOOK = "CSRFProtect.init_app.<locals>.csrf_protect"


def check_hooks(app: Flask) -> None:
    """Refuse, at start, a request hook that a lane would skip: one on the app or on a
    blueprint whose views a lane answers, that the lanes do not account for."""
    served = {rule.endpoint.partition(".")[0] for rule in app.url_map.iter_rules()
              if lane_of(app.view_functions[rule.endpoint]) is not None}
    for hooks in (app.before_request_funcs, app.after_request_funcs,
                  app.teardown_request_funcs, app.url_value_preprocessors):
        for blueprint in (None, *served):
            for hook in hooks.get(blueprint, ()):
                name = getattr(hook, "__qualname__", repr(hook))
                if name == CSRF_HOOK and app.config.get("WTF_CSRF_CHECK_DEFAULT") is False:
                    continue  # Flask-WTF's hook checks nothing unless asked (dashboard)
                if getattr(hook, "not_on_lane_routes", None):
                    continue  # it says why it never acts on a lane's route
                if name not in KNOWN_HOOKS:
                    raise RuntimeError(
                        f"request hook {name} on {blueprint or 'the app'} would be skipped "
                        "by the device lanes (api/lanes.py), which answer that blueprint's "
                        "common requests without Flask: put its rule in device_requests "
                        "(both paths call it) and name it in lanes.KNOWN_HOOKS")


def init_app(app: Flask) -> None:
    """Install before ``ops`` wraps the app for trusted proxies, so ``REMOTE_ADDR`` is
    already the device's when a lane reads it."""
    app.wsgi_app = DeviceLanes(app, app.wsgi_app)
