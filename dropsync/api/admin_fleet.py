"""Admin API, fleet side: commands, device messages, groups and system stats.

Routes join the admin blueprint (same prefix, same admin-token check)."""

from __future__ import annotations

from flask import g

from .. import __version__
from ..fleet import groups
from ..fleet.messages import query_messages
from ..schemas import (
    CancelSchema,
    CommandCreateSchema,
    CommandListSchema,
    CommandSchema,
    DeviceCommandCreateSchema,
    DeviceCommandsQuerySchema,
    DeviceCommandsSchema,
    GroupListSchema,
    GroupMembersSchema,
    GroupSchema,
    GroupSettingsSchema,
    MessagePageSchema,
    MessagesQuerySchema,
    StatsSchema,
)
from .admin import bp, stores
from .context import current_hub
from .contract import contract


def queue():
    return current_hub().commands


# -- commands ----------------------------------------------------------------------------
@bp.post("/devices/<device_id>/command")
@contract(body=DeviceCommandCreateSchema, response=CommandSchema, status=201)
def send_device_command(device_id: str, body):
    """Queue a command for one device."""
    stores().devices.get(device_id)  # 404 for an unknown device, whatever the id looks like
    return queue().send(device_id, body, g.admin)


@bp.post("/commands")
@contract(body=CommandCreateSchema, response=CommandSchema, status=201, errors=(404,))
def send_command(body):
    """Queue a command for a device, a group ('group:<name>') or every device ('all').

    A group or fleet command becomes one delivery per device it names now.
    """
    return queue().send(body.pop("target"), body, g.admin)


@bp.get("/commands")
@contract(response=CommandListSchema)
def list_open_commands():
    """Commands with deliveries still open, newest first."""
    found = queue().list_open()
    return {"commands": found, "count": len(found)}


@bp.get("/commands/<int:command_id>")
@contract(response=CommandSchema)
def show_command(command_id: int):
    """One command and what each targeted device did with it."""
    return queue().describe(command_id)


@bp.post("/commands/<int:command_id>/cancel")
@contract(body=CancelSchema, response=CommandSchema, errors=(409,))
def cancel_command(command_id: int, body):
    """Cancel a command's open deliveries (or one device's)."""
    return queue().cancel(command_id, device_id=body.get("device_id"), actor=g.admin)


@bp.get("/devices/<device_id>/commands")
@contract(query=DeviceCommandsQuerySchema, response=DeviceCommandsSchema)
def list_device_commands(device_id: str, query):
    """A device's commands: open ones first, then ended ones newest first, paged."""
    stores().devices.get(device_id)
    return queue().device_commands(device_id, states=query["state"],
                                   before_seq=query.get("before"), limit=query["limit"])


# -- messages ----------------------------------------------------------------------------
@bp.get("/devices/<device_id>/messages")
@contract(query=MessagesQuerySchema, response=MessagePageSchema)
def list_device_messages(device_id: str, query):
    """A device's messages, newest first, by level and hub time, paged."""
    stores().devices.get(device_id)
    return query_messages(stores(), device_id=device_id, level=query.get("level"),
                          since=query.get("since"), until=query.get("until"),
                          before_seq=query.get("before"), after_seq=query.get("after"),
                          limit=query["limit"])


@bp.get("/messages")
@contract(query=MessagesQuerySchema, response=MessagePageSchema)
def list_messages(query):
    """Messages from every device, newest first, by level and hub time, paged."""
    return query_messages(stores(), level=query.get("level"), since=query.get("since"),
                          until=query.get("until"), before_seq=query.get("before"),
                          after_seq=query.get("after"), limit=query["limit"])


# -- groups ------------------------------------------------------------------------------
@bp.get("/groups")
@contract(response=GroupListSchema)
def list_groups():
    """Groups, with their members and settings."""
    found = groups.list_groups(stores())
    return {"groups": found, "count": len(found)}


@bp.get("/groups/<name>")
@contract(response=GroupSchema)
def show_group(name: str):
    """One group."""
    return groups.get_group(stores(), name)


@bp.put("/groups/<name>")
@contract(body=GroupSettingsSchema, response=GroupSchema)
def set_group(name: str, body):
    """Create a group or change its settings (poll interval, description)."""
    return groups.set_group(stores(), name, body)


@bp.delete("/groups/<name>")
@contract(response=GroupSchema)
def delete_group(name: str):
    """Delete a group: its settings go and its members leave it."""
    return groups.delete_group(stores(), name, actor=g.admin)


@bp.post("/groups/<name>/members")
@contract(body=GroupMembersSchema, response=GroupSchema)
def add_group_members(name: str, body):
    """Add devices to a group."""
    return groups.add_members(stores(), name, body["devices"], actor=g.admin)


@bp.delete("/groups/<name>/members/<device_id>")
@contract(response=GroupSchema)
def remove_group_member(name: str, device_id: str):
    """Take a device out of a group."""
    return groups.remove_member(stores(), name, device_id, actor=g.admin)


# -- system ------------------------------------------------------------------------------
@bp.get("/system/stats")
@contract(response=StatsSchema)
def system_stats():
    """Fleet, command and store figures at a glance."""
    hub = current_hub()
    connections = {"online": 0, "overdue": 0, "offline": 0}
    everyone = stores().devices.all()
    for device in everyone:
        connections[hub.pacing.fleet_view(device)["connection"]] += 1
    store = stores().state()
    return {"version": __version__, "uptime_s": round(hub.uptime_s(), 1),
            "devices": {"total": len(everyone),
                        "disabled": sum(1 for d in everyone if not d["enabled"]),
                        **connections},
            "commands": queue().stats(), "history": store.pop("history"), "store": store}
