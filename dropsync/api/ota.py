"""The stock updaters' route, ``GET /api/v1/ota/{id}``: nodes that run only their core's
``ESPhttpUpdate`` (ESP8266) or ``httpUpdate`` (ESP32) get the firmware image staged for
them (``staging/<target>/firmware/<name>.bin``, see sync/firmware_images.py).

Those updaters cannot send a bearer token: they send HTTP Basic credentials set with
``setAuthorization(user, password)`` or written as ``http://user:password@hub/...`` in the
URL. Here the user is the device id and the password its token (a bearer token works too).
A token in the query string is not accepted: it would be written to access logs.

Both updaters speak HTTP/1.0, need ``Content-Length``, check ``x-MD5`` when it is sent,
and take 304 as "no update", which is answered when the sketch they report running is the
staged image.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, request

from ..errors import Conflict, NotFound
from ..sync.firmware_images import AmbiguousImage, appended_digest, choose_image, is_running
from . import accel
from .context import admit_updater_request, current_hub
from .contract import contract
from .files import OCTET_STREAM, send_stored_file

bp = Blueprint("ota", __name__, url_prefix="/api/v1/ota")


bp.before_request(admit_updater_request)


@bp.after_request
def ask_for_basic_credentials(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="DropSync", charset="UTF-8"'
    return response


def updater_header(name: str) -> str | None:
    """An ``x-ESP8266-<name>`` or ``x-ESP32-<name>`` request header."""
    return request.headers.get(f"x-ESP8266-{name}") or request.headers.get(f"x-ESP32-{name}")


@bp.get("/<device_id>")
@contract(produces=OCTET_STREAM, errors=(409,), other_responses={
    304: "Not modified: the sketch the updater reports running (x-ESP8266-sketch-md5, "
         "x-ESP32-sketch-sha256) is the staged image"})
def firmware_image(device_id: str):
    """The firmware image staged for this device, for ESP8266httpUpdate / ESP32 HTTPUpdate.

    From its own ``firmware/*.bin``, else its groups', else ``all``'s. ``x-MD5`` carries
    the image's MD5 (the updater checks it), ``x-version`` its package version. With
    ``x-ESP8266-mode: version`` only the headers are sent.
    """
    hub = current_hub()
    try:
        image = choose_image(g.device, hub.packages.offered(g.device))
        if image is None and choose_image(g.device, hub.packages.catalog.files_for(g.device)):
            # held back by a rollout (a wave not started): "no update", as when it runs it
            return Response(status=304, headers={"Cache-Control": "no-cache"})
    except AmbiguousImage as ambiguous:
        raise Conflict(str(ambiguous), {"paths": ambiguous.paths},
                       code="several_images") from None
    if image is None:
        raise NotFound(f"no firmware image is staged for {device_id}: put one at "
                       f"staging/{device_id}/firmware/<name>.bin", code="no_firmware")
    too_large = hub.firmware_images.too_large_for(g.device, image)
    if too_large:
        raise Conflict(too_large, {"size": image["size"]}, code="image_too_large")
    mode = updater_header("mode") or "sketch"
    if mode == "spiffs":
        raise NotFound("file system images are not served here; stage the files for the "
                       "node instead", code="no_file_system_image")
    blob_path = hub.blobs.path_of(image["sha256"])
    headers = {"x-MD5": image["md5"], "x-version": str(image["version"]),
               "X-Content-SHA256": image["sha256"], "Cache-Control": "no-cache"}
    if mode == "version":
        return Response(status=200, mimetype=OCTET_STREAM, headers=headers)
    sketch_sha256 = updater_header("sketch-sha256")
    appended = appended_digest(blob_path, image["size"]) if sketch_sha256 else None
    if is_running(image, updater_header("sketch-md5"), sketch_sha256, appended):
        note_state(image, "applied")
        return Response(status=304, headers=headers)
    note_state(image, "downloading")
    accel_prefix = current_app.config["DOWNLOAD_ACCEL_PREFIX"]
    if accel_prefix:  # nginx sends the bytes (with Content-Length, as the updaters need)
        return accel.whole_file(accel_prefix, image["sha256"], image["size"], headers)
    response = send_stored_file(blob_path, etag=image["sha256"],
                                download_name=image["path"].rsplit("/", 1)[-1])
    response.headers.update(headers)
    return response


def note_state(image, state: str) -> None:
    """Keep what the updater's request says in the sync history (a stock updater never
    reports), only when it changes: a node checking every hour writes nothing new."""
    packages = current_hub().packages
    latest = packages.stores.sync_state.by_package().get(image["id"], {}) \
        .get(g.device["id"])
    if latest and latest["state"] == state and latest["version"] == image["version"]:
        return
    packages.record_sync_report(g.device, {"package": image["id"],
                                           "version": image["version"], "state": state,
                                           **({"received": 0} if state == "downloading"
                                              else {})})
