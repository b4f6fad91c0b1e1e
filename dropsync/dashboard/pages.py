"""The dashboard's pages and the posts behind their forms.

Each view parses the form, calls the same service the admin API calls, and answers with
a page (or a redirect to one, with a message). A page lists its live regions: its scripts
fetch the same URL with ``?live=1`` and get those regions re-rendered as JSON.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Any

from flask import (
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import NotFound

from .. import __version__
from ..api.accel import send_stored_file
from ..api.context import current_hub
from ..config import RELEASE_ACTIONS
from ..errors import BadRequest, DropSyncError, ValidationFailed
from ..fleet import credentials, devices
from ..fleet.messages import LEVELS
from ..hub import local_url
from ..relay.commands import Target
from ..schemas import (
    AdminTokenCreateSchema,
    CommandCreateSchema,
    DeviceCommandCreateSchema,
    DeviceRegisterSchema,
    DeviceUpdateSchema,
    OperatorCreateSchema,
    PasswordSchema,
)
from ..sync.packages import GROUP_PREFIX
from ..sync.rollouts import DEFAULTS as ROLLOUT_DEFAULTS
from . import bp, views
from .auth import actor, safe_next, wants_json

#: Form fields that are the page's, not the service's.
FORM_ONLY = ("csrf_token", "confirm", "next")


def hub():
    return current_hub()


#: Live regions with nothing in them that depends on who asks (no forms, so no CSRF
#: token): rendered once per refresh period and shared by every open page.
SHARED_REGIONS = {"overview-live", "device-rows"}


def render_page(template: str, regions: dict[str, str] | None = None, **context: Any):
    """The page, or with ``?live=1`` its live regions as JSON ``{"regions": {id: html}}``.

    The JSON is small and the request short: an open page costs one quick request every
    few seconds, never a thread held open. It carries an ETag, so a page whose regions
    have not changed gets an empty 304.
    """
    context.setdefault("live_regions", regions or {})
    if request.args.get("live") != "1":
        return render_template(template, **context)
    cache = views.recent(hub())
    rendered = {}
    for region, partial in (regions or {}).items():
        if region in SHARED_REGIONS:
            key = ("region", request.path, request.query_string, region)
            rendered[region] = cache.get(key, lambda p=partial: render_template(p, **context))
        else:
            rendered[region] = render_template(partial, **context)
    answer = jsonify({"regions": rendered})
    answer.add_etag()
    answer.headers["Cache-Control"] = "no-cache"  # revalidate every time: 304 if unchanged
    return answer.make_conditional(request)


class OneTimeNotes:
    """What one operator's next page shows once (a token just made), kept in the hub's
    memory, never in the cookie: a key in the redirect's URL takes it, once, for the
    operator who made it, within ``ttl_s``."""

    def __init__(self, ttl_s: float = 600.0, max_entries: int = 256):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._notes: dict[str, tuple[float, str, dict]] = {}
        self._lock = threading.Lock()

    def keep(self, owner: str, note: dict) -> str:
        key = secrets.token_urlsafe(16)
        with self._lock:
            now = time.monotonic()
            for old in [k for k, (at, _, _) in self._notes.items() if now - at > self.ttl_s]:
                del self._notes[old]
            while len(self._notes) >= self.max_entries:
                del self._notes[next(iter(self._notes))]
            self._notes[key] = (now, owner, note)
        return key

    def take(self, key: str, owner: str) -> dict | None:
        with self._lock:
            found = self._notes.get(key)
            if found is None or found[1] != owner \
                    or time.monotonic() - found[0] > self.ttl_s:
                return None
            del self._notes[key]
            return found[2]


def form_data(schema: Schema) -> dict[str, Any]:
    """A form post (or the page's JSON fetch) loaded through the admin API's own schema;
    fields left empty count as not given."""
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object", code="invalid_json")
    else:
        data = {k: v for k, v in request.form.items() if k not in FORM_ONLY and v.strip()}
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed("the form has errors", exc.messages) from None


def error_text(exc: DropSyncError) -> str:
    if isinstance(exc.details, dict):
        parts = [f"{field}: {' '.join(map(str, m)) if isinstance(m, list) else m}"
                 for field, m in exc.details.items()]
        return f"{exc.message} ({'; '.join(parts)})"
    return exc.message


def confirmed(question: str, button: str):
    """None when the post carries ``confirm=yes`` (the page's script asks first); else a
    page asking the question, so a destructive post never happens by one stray click."""
    if request.form.get("confirm") == "yes":
        return None
    return render_template("dashboard/confirm.html", question=question, button=button,
                           action=request.path,
                           carried=[(k, v) for k, v in request.form.items(multi=True)
                                    if k not in FORM_ONLY])


def done(message: str, to: str):
    """After a change: a fresh page (the cached fleet figures are dropped) and a note."""
    views.recent(hub()).clear()
    flash(message, "ok")
    return redirect(to)


#: Form fields never kept for the page after a refused post.
SECRET_FIELDS = {"password", "token"}


def failed(exc: DropSyncError, to: str):
    """A refused form post: back to the page with the error, and what was typed kept for
    that one page (never a password), so the operator corrects it instead of retyping."""
    if wants_json():
        raise exc
    flash(error_text(exc), "error")
    if request.form:
        session["typed"] = {k: v[:4000] for k, v in request.form.items()
                            if k not in FORM_ONLY and k not in SECRET_FIELDS}
    return redirect(to)


@bp.app_template_global()
def typed(name: str, default: str = "") -> str:
    """What the operator typed into ``name`` before a refused post, else ``default``."""
    if "typed" not in g:
        g.typed = session.pop("typed", {})
    return g.typed.get(name, default)


# -- overview --------------------------------------------------------------------------
@bp.get("/")
def overview():
    return render_page("dashboard/overview.html", {"overview-live": "dashboard/_overview.html"},
                       data=views.overview(hub()))


# -- devices ---------------------------------------------------------------------------
def device_filter(args) -> dict[str, str]:
    """The devices list's search, filters and order, as its URL (or a form) carries them."""
    state = args.get("state", "")
    sort = args.get("sort", "id")
    return {"q": args.get("q", "")[:200],
            "state": state if state in views.DEVICE_STATES else "",
            "fw": args.get("fw", "").strip()[:64],
            "sort": sort if sort in views.SORT_KEYS else "id",
            "order": "desc" if args.get("order") == "desc" else "asc"}


def matching_devices(chosen: dict[str, str], page: int = 1,
                     per_page: int = views.PAGE_SIZE) -> dict[str, Any]:
    return views.find_devices(views.fleet(hub()), chosen["q"], chosen["state"], page,
                              per_page, firmware=chosen["fw"], sort=chosen["sort"],
                              order=chosen["order"])


@bp.get("/devices")
def device_list():
    chosen = device_filter(request.args)
    try:
        page = int(request.args.get("page", "1"))
    except ValueError:
        page = 1
    found = matching_devices(chosen, page)
    return render_page("dashboard/devices.html", {"device-rows": "dashboard/_device_rows.html"},
                       states=views.DEVICE_STATES, filters=chosen,
                       versions=[v["version"] for v in
                                 views.firmware_breakdown(views.fleet(hub()))],
                       bulk_max=current_app.config["BULK_MAX_DEVICES"],
                       **chosen, **found)


@bp.get("/register")
def register_form():
    return render_page("dashboard/register.html")


@bp.post("/devices")
def register():
    try:
        body = form_data(DeviceRegisterSchema())
        device, token = devices.register_device(hub().stores, body.pop("id"), actor=actor(),
                                                **body)
    except DropSyncError as exc:
        return failed(exc, url_for(".register_form"))
    views.recent(hub()).clear()
    return show_token_once(device["id"], token, "registered")


def show_token_once(device_id: str, token: str, what: str):
    """After the post that made a token: a redirect to the page that shows it, once
    (post/redirect/get), so a reload shows the page again and never posts again."""
    key = shown_once().keep(g.operator, {"device_id": device_id, "token": token,
                                         "what": what})
    return redirect(url_for(".device_token", device_id=device_id, once=key))


def shown_once() -> OneTimeNotes:
    return current_app.extensions.setdefault("dropsync.shown_once", OneTimeNotes())


@bp.get("/devices/<device_id>/token")
def device_token(device_id: str):
    """The device's token with the firmware's config lines, the one time; after that (a
    reload, the back button) a page that says it was shown and how to get a new one."""
    note = shown_once().take(request.args.get("once", ""), g.operator)
    device = devices.get_device(hub().stores, device_id)  # 404 for an unknown device
    if note is None or note["device_id"] != device_id:
        return render_template("dashboard/token.html", device=device, token=None,
                               what="token"), 410
    return render_template("dashboard/token.html", device=device, token=note["token"],
                           what=note["what"], hub_url=hub_url_for_devices())


def hub_url_for_devices() -> str:
    """The hub's URL as a node on the LAN reaches it: the host the operator's browser
    used, unless that is a loopback name a node could not use; then the machine's name,
    as the start-up log gives it, when the hub listens on every interface."""
    if request.host.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "[::1]"):
        return request.host_url.rstrip("/")
    config = current_app.config
    if config["HOST"] in ("", "0.0.0.0", "::"):
        return f"http://{socket.gethostname()}:{config['PORT']}"
    return local_url(config)


@bp.get("/devices/<device_id>")
def device_detail(device_id: str):
    level = request.args.get("level", "")
    if level not in LEVELS:
        level = ""
    data = views.device_detail(hub(), device_id, level)
    return render_page("dashboard/device.html", {
        "device-state": "dashboard/_device_state.html",
        "device-commands": "dashboard/_device_commands.html",
        "device-files": "dashboard/_device_files.html",
        "device-charts": "dashboard/_device_charts.html",
        "device-messages": "dashboard/_device_messages.html",
    }, level=level, levels=LEVELS, **data)


@bp.post("/devices/<device_id>/commands")
def send_device_command(device_id: str):
    back = url_for(".device_detail", device_id=device_id)
    try:
        devices.get_device(hub().stores, device_id)  # 404 for an unknown device
        command = hub().commands.send(device_id, form_data(DeviceCommandCreateSchema()),
                                      actor())
    except DropSyncError as exc:
        return failed(exc, back)
    if wants_json():
        return jsonify(command), 201
    return done(f"Command {command['id']} ({command['name']}) queued.", back)


@bp.post("/devices/<device_id>/edit")
def edit_device(device_id: str):
    """Name, groups and poll interval, through the admin API's own schema and rule; an
    emptied groups field leaves every group, an emptied interval goes back to the
    group's or the hub's."""
    back = url_for(".device_detail", device_id=device_id)
    form = {k: v.strip() for k, v in request.form.items() if k not in FORM_ONLY}
    changes = {"name": form.get("name") or device_id,
               "groups": [g.strip() for g in form.get("groups", "").split(",") if g.strip()],
               "poll_interval_s": form.get("poll_interval_s") or None}
    try:
        body = DeviceUpdateSchema().load(changes)
        devices.update_device(hub().stores, device_id, body, actor=actor())
    except ValidationError as exc:
        return failed(ValidationFailed("the form has errors", exc.messages), back)
    except DropSyncError as exc:
        return failed(exc, back)
    return done(f"{device_id} saved.", back)


@bp.post("/devices/<device_id>/enable", defaults={"change": "enable"})
@bp.post("/devices/<device_id>/disable", defaults={"change": "disable"})
def set_enabled(device_id: str, change: str):
    back = url_for(".device_detail", device_id=device_id)
    if change == "disable" and (page := confirmed(
            f"Disable {device_id}? Its requests get 403 until it is enabled.", "Disable")):
        return page
    try:
        devices.update_device(hub().stores, device_id, {"enabled": change == "enable"},
                              actor=actor())
    except DropSyncError as exc:
        return failed(exc, back)
    return done(f"{device_id} {change}d.", back)


@bp.post("/devices/<device_id>/rotate-token")
def rotate_token(device_id: str):
    if page := confirmed(f"Give {device_id} a new token? The old one stops working at "
                         "once, so the node needs the new one.", "Rotate token"):
        return page
    try:
        device, token = devices.rotate_token(hub().stores, device_id, actor=actor())
    except DropSyncError as exc:
        return failed(exc, url_for(".device_detail", device_id=device_id))
    return show_token_once(device["id"], token, "given a new token")


@bp.post("/devices/<device_id>/delete")
def delete_device(device_id: str):
    if page := confirmed(f"Delete {device_id}? Its token stops working at once.", "Delete"):
        return page
    try:
        devices.delete_device(hub().stores, device_id, actor=actor())
    except DropSyncError as exc:
        return failed(exc, url_for(".device_detail", device_id=device_id))
    return done(f"{device_id} deleted.", url_for(".device_list"))


@bp.get("/uploads/<device_id>/<filename>")
def download_upload(device_id: str, filename: str):
    record, path = hub().uploads.get(device_id, filename)
    return send_stored_file(path, etag=record["sha256"], download_name=record["name"],
                            as_attachment=True)


# -- commands --------------------------------------------------------------------------
@bp.get("/commands")
def command_list():
    return render_page("dashboard/commands.html",
                       {"command-rows": "dashboard/_command_rows.html"},
                       commands=hub().commands.list_open(),
                       recent=hub().commands.recently_ended(20),
                       groups=sorted({g for d in devices.list_devices(hub().stores)
                                      for g in d.get("groups", ())}))


@bp.get("/failed")
def failed_list():
    """Failures first: every failed delivery among the latest ended, with its reason and
    the device's result."""
    return render_page("dashboard/failed.html", {"failed-rows": "dashboard/_failed_rows.html"},
                       failures=views.failures(hub()), scanned=views.RECENT_COMMANDS)


@bp.post("/commands")
def send_command():
    back = url_for(".command_list")
    try:
        body = form_data(CommandCreateSchema())
        command = hub().commands.send(body.pop("target"), body, actor())
    except DropSyncError as exc:
        return failed(exc, back)
    if wants_json():
        return jsonify(command), 201
    return done(f"Command {command['id']} ({command['name']}) queued for "
                f"{len(command['deliveries'])} device(s).", back)


@bp.post("/commands/<int:command_id>/cancel")
def cancel_command(command_id: int):
    back = safe_next(request.form.get("next"), url_for(".command_list"))
    device_id = request.form.get("device_id") or None
    try:
        hub().commands.cancel(command_id, device_id=device_id, actor=actor())
    except DropSyncError as exc:
        return failed(exc, back)
    return done(f"Command {command_id} cancelled.", back)


# -- packages --------------------------------------------------------------------------
@bp.get("/packages")
def package_list():
    fleet = devices.list_devices(hub().stores)
    known = [d["id"] for d in fleet]
    groups = sorted({g for d in fleet for g in d.get("groups", ())})
    return render_page("dashboard/packages.html",
                       {"package-rows": "dashboard/_package_rows.html",
                        "staging-state": "dashboard/_staging.html"},
                       packages=views.package_progress(hub()), devices=known,
                       groups=groups,
                       staging=hub().staging_report(),
                       max_bytes=current_app.config["STAGING_UPLOAD_MAX_BYTES"])


@bp.get("/packages/<package_id>")
def package_detail(package_id: str):
    stored = hub().packages.get(package_id)  # 404 for an unknown id
    found = views.package_progress(hub(), [package_id])
    return render_page("dashboard/package.html",
                       {"package-devices": "dashboard/_package_devices.html"},
                       package=found[0] if found else stored,
                       signature=hub().firmware_images.signature_dict(stored),
                       signing=bool(hub().firmware_images.keys),
                       rollouts=[r for r in hub().rollouts.list()
                                 if r["package_id"] == package_id
                                 and r["package_version"] == stored["version"]],
                       rollout_defaults=ROLLOUT_DEFAULTS)


@bp.post("/packages/<package_id>/withdraw")
def withdraw_package(package_id: str):
    if page := confirmed(f"Withdraw package {package_id}? Its staged file is deleted and "
                         "no device is offered it any more.", "Withdraw"):
        return page
    try:
        package = hub().staging.withdraw(package_id)
    except DropSyncError as exc:
        return failed(exc, url_for(".package_list"))
    return done(f"{package['target']}/{package['path']} withdrawn.", url_for(".package_list"))


def staging_folder_for(text: str) -> str:
    """The staging folder an operator's target names (``group:x`` as the Commands page
    writes it, or ``group-x``), refused when it reaches no device today: a mistyped target
    would otherwise be staged for nobody, quietly. (A file dropped into the folder by hand
    may still name a device to come.)"""
    target = Target.parse(text.strip())
    if target.kind == "all":
        return "all"
    try:
        hub().commands.resolve_target(target)
    except DropSyncError as exc:
        raise ValidationFailed(
            f"{text!r} reaches no device ({exc.message}): use all, group-<name> of a group "
            "with devices, or a registered device id", {"target": [text]},
            code="unknown_target") from None
    return f"{GROUP_PREFIX}{target.name}" if target.kind == "group" else target.name


@bp.put("/staging/<target>/<path:path>")
def stage_file(target: str, path: str):
    """The browser's upload: the same path as the admin API's, and as a dropped file."""
    limit = current_app.config["STAGING_UPLOAD_MAX_BYTES"]
    request.max_content_length = limit  # replaces MAX_REQUEST_BYTES for this route
    target = staging_folder_for(target)
    release = request.args.get("release") or None
    if release not in (None, *RELEASE_ACTIONS):
        raise ValidationFailed(f"release must be one of {', '.join(RELEASE_ACTIONS)}",
                               code="bad_release")
    package, changed = hub().staging.stage_stream(target, path, request.stream,
                                                  source="dashboard", max_bytes=limit,
                                                  release=release)
    views.recent(hub()).clear()
    progress = hub().packages.with_progress(devices.list_devices(hub().stores), [package])
    return jsonify({**progress[0], "changed": changed}), 201


# -- operators and admin tokens ---------------------------------------------------------
@bp.get("/operators")
def operator_list():
    stores = hub().stores
    return render_page("dashboard/operators.html",
                       operators=credentials.list_operators(stores),
                       tokens=credentials.list_admin_tokens(stores))


@bp.post("/operators")
def add_operator():
    back = url_for(".operator_list")
    try:
        body = form_data(OperatorCreateSchema())
        credentials.add_operator(hub().stores, body["username"], body["password"])
    except DropSyncError as exc:
        return failed(exc, back)
    return done(f"Operator {body['username']} added.", back)


@bp.post("/operators/<username>/password")
def set_password(username: str):
    back = url_for(".operator_list")
    try:
        body = form_data(PasswordSchema())
        mine = username == g.operator
        credentials.set_operator_password(hub().stores, username, body["password"],
                                          keep_session=session.get("sid") if mine else None)
    except DropSyncError as exc:
        return failed(exc, back)
    return done(f"Password changed for {username}; their other sessions have ended.", back)


@bp.post("/operators/<username>/revoke")
def revoke_operator(username: str):
    question = f"Revoke operator {username}? They are logged out everywhere."
    if username == g.operator:
        question = (f"{username} is your own account. Revoke it? You are logged out at "
                    "once, and only another operator (or dropsync operator add) can let "
                    "you back in.")
    if page := confirmed(question, "Revoke"):
        return page
    back = url_for(".operator_list")
    try:
        credentials.remove_operator(hub().stores, username)
    except DropSyncError as exc:
        return failed(exc, back)
    return done(f"Operator {username} revoked.", back)


@bp.post("/tokens")
def create_token():
    try:
        body = form_data(AdminTokenCreateSchema())
        record, token = credentials.create_admin_token(hub().stores, body["label"])
    except DropSyncError as exc:
        return failed(exc, url_for(".operator_list"))
    key = shown_once().keep(g.operator, {"token_id": record["id"], "token": token,
                                         "label": record["label"]})
    return redirect(url_for(".admin_token", token_id=record["id"], once=key))


@bp.get("/tokens/<token_id>")
def admin_token(token_id: str):
    """A new admin token, the one time (post/redirect/get, as a device's token)."""
    note = shown_once().take(request.args.get("once", ""), g.operator)
    if note is None or note["token_id"] != token_id:
        return render_template("dashboard/admin_token.html", record={"id": token_id},
                               token=None), 410
    return render_template("dashboard/admin_token.html", token=note["token"],
                           record={"id": token_id, "label": note["label"]})


@bp.post("/tokens/<token_id>/revoke")
def revoke_token(token_id: str):
    if page := confirmed(f"Revoke admin token {token_id}? Scripts using it stop working.",
                         "Revoke"):
        return page
    try:
        credentials.revoke_admin_token(hub().stores, token_id)
    except DropSyncError as exc:
        return failed(exc, url_for(".operator_list"))
    return done(f"Admin token {token_id} revoked.", url_for(".operator_list"))


# -- activity --------------------------------------------------------------------------
@bp.get("/activity")
def activity():
    kind = request.args.get("kind", "").strip()[:64]
    device = request.args.get("device", "").strip()[:64]
    try:
        before = int(request.args["before"]) if request.args.get("before") else None
    except ValueError:
        before = None
    page = views.activity(hub(), kind=kind, device=device, before=before)
    return render_page("dashboard/activity.html", kind=kind, device=device, before=before,
                       **page)


@bp.route("/<path:anything>")
def not_found(anything: str):
    raise NotFound("There is no dashboard page here.")


@bp.app_template_global()
def dropsync_version() -> str:
    return __version__


bp.add_app_template_filter(views.iso_time, "iso_time")
bp.add_app_template_filter(views.local_time, "local_time")
bp.add_app_template_global(views.hub_zone, "hub_zone")
bp.add_app_template_filter(views.size, "size")
bp.add_app_template_filter(views.result_text, "result_text")
bp.add_app_template_filter(views.duration, "duration")
