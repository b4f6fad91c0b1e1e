"""Acting on many devices from the devices list, and the lists as CSV.

- ``POST /dashboard/devices/bulk``: the ticked devices, or every device matching the
  list's filter, join or leave a group, are disabled or enabled, and get a command, in one
  post (plain form, CSRF, no JavaScript needed); at most ``BULK_MAX_DEVICES`` at once.
- ``GET /dashboard/devices.csv``: the filtered, sorted list; ``GET
  /dashboard/commands/<id>/deliveries.csv``: one command's deliveries.

Cells a spreadsheet would run as a formula (starting with = + - @, a tab or a carriage
return) get a leading apostrophe: a device names itself, and its name must not become a
formula on an operator's machine.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from flask import Response, current_app, request, url_for
from marshmallow import ValidationError

from ..api.context import current_hub
from ..errors import DropSyncError, ValidationFailed
from ..fleet import devices, groups
from ..schemas import DeviceCommandCreateSchema
from . import bp
from .auth import actor
from .pages import device_filter, done, failed, matching_devices

ACTIONS = ("", "add", "remove")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def chosen_devices() -> list[str]:
    """The ticked devices, or every device matching the filter the form carries."""
    if request.form.get("all_matching") == "yes":
        return matching_devices(device_filter(request.form))["matching"]
    return list(dict.fromkeys(request.form.getlist("device")))


@bp.post("/devices/bulk")
def bulk_action():
    back = url_for(".device_list", **{k: v for k, v in device_filter(request.form).items()
                                      if v and (k, v) not in (("sort", "id"),
                                                              ("order", "asc"))})
    hub = current_hub()
    try:
        ids = chosen_devices()
        limit = current_app.config["BULK_MAX_DEVICES"]
        if not ids:
            raise ValidationFailed("tick at least one device (or all matching the filter)",
                                   code="no_devices")
        if len(ids) > limit:
            raise ValidationFailed(f"{len(ids)} devices are more than one action may name "
                                   f"(BULK_MAX_DEVICES, {limit}): narrow the filter",
                                   code="too_many_devices")
        group = request.form.get("group", "").strip()
        group_action = request.form.get("group_action", "add" if group else "")
        enable = request.form.get("enabled", "")
        name = request.form.get("command", "").strip()
        command_body = None
        if name:  # checked before anything changes: all of the action, or none of it
            try:
                command_body = DeviceCommandCreateSchema().load({
                    "name": name, "args": request.form.get("args") or "{}",
                    **({"priority": request.form["priority"]}
                       if request.form.get("priority") else {})})
            except ValidationError as exc:
                raise ValidationFailed("the command has errors", exc.messages) from None
        if group_action not in ACTIONS or (group_action and not group) or \
                enable not in ("", "enable", "disable"):
            raise ValidationFailed("say which group to add to or remove from, and enable or "
                                   "disable", code="bad_bulk_action")
        if not (group_action or enable or command_body):
            raise ValidationFailed("choose something to do: a group, enable or disable, or a "
                                   "command", code="nothing_to_do")
        for device_id in ids:
            devices.get_device(hub.stores, device_id)  # all exist, or 404 before a change
        said = []
        if group_action == "add":
            groups.add_members(hub.stores, group, ids, actor=actor())
            said.append(f"added to group {group}")
        elif group_action == "remove":
            removed = groups.remove_members(hub.stores, group, ids, actor=actor())
            said.append(f"{removed} taken out of group {group}")
        if enable:
            for device_id in ids:
                devices.update_device(hub.stores, device_id, {"enabled": enable == "enable"},
                                      actor=actor())
            said.append(f"{enable}d")
        if command_body is not None:
            command = hub.commands.send_to(ids, command_body, actor())
            said.append(f"command {command['id']} ({command['name']}) queued")
    except DropSyncError as exc:
        return failed(exc, back)
    return done(f"{len(ids)} device(s): " + "; ".join(said) + ".", back)


def csv_cell(value: Any) -> str:
    """A number as it is (RSSI is negative); text that a spreadsheet would run, quoted."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_answer(rows: list[list[Any]], filename: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
    return Response(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{filename}"'})


DEVICE_COLUMNS = ("id", "name", "state", "last_seen", "rssi", "free_heap", "firmware_version",
                  "groups")


@bp.get("/devices.csv")
def devices_csv():
    """The devices list as it is filtered and sorted, every page of it."""
    found = matching_devices(device_filter(request.args), 1, 10 ** 9)["devices"]
    rows: list[list[Any]] = [list(DEVICE_COLUMNS)]
    for d in found:
        inventory = d["inventory"]
        rows.append([d["id"], d["name"], d["state"], d["last_seen"], inventory.get("rssi"),
                     inventory.get("free_heap"), inventory.get("firmware_version"),
                     " ".join(d.get("groups", ()))])
    return csv_answer(rows, "devices.csv")


@bp.get("/commands/<int:command_id>/deliveries.csv")
def deliveries_csv(command_id: int):
    command = current_hub().commands.describe(command_id)  # 404 for an unknown command
    rows: list[list[Any]] = [["command_id", "name", "device_id", "state", "reason",
                              "attempts", "delivered_at", "ended_at", "result"]]
    for d in command["deliveries"]:
        rows.append([command["id"], command["name"], d["device_id"], d["state"],
                     d.get("reason"), d.get("attempts"), d.get("delivered_at"),
                     d.get("ended_at"), d.get("result")])
    return csv_answer(rows, f"command-{command_id}-deliveries.csv")
