"""Groups: named sets of devices that commands, staging folders and poll intervals target.

Membership lives on each device (its ``groups`` list), so a device carries its groups with
it; a group record only holds settings (poll interval, description). A group exists while
it has members or settings.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..clock import now_iso
from ..errors import NotFound
from ..store import Document, Stores
from .devices import update_device, validate_groups


def list_groups(stores: Stores) -> list[Document]:
    members: dict[str, list[str]] = {}
    for device in stores.devices.all():
        for group in device.get("groups", ()):
            members.setdefault(group, []).append(device["id"])
    settings = {g["name"]: g for g in stores.groups.all()}
    return [describe(name, settings.get(name), members.get(name, []))
            for name in sorted(set(members) | set(settings))]


def get_group(stores: Stores, name: str) -> Document:
    members = sorted(d["id"] for d in stores.devices.all() if name in d.get("groups", ()))
    settings = stores.groups.get(name) if name in stores.groups else None
    if settings is None and not members:
        raise NotFound(f"group {name!r} not found", code="group_not_found")
    return describe(name, settings, members)


def describe(name: str, settings: Document | None, members: list[str]) -> Document:
    settings = settings or {}
    return {"name": name, "description": settings.get("description"),
            "poll_interval_s": settings.get("poll_interval_s"),
            "devices": sorted(members), "count": len(members)}


def set_group(stores: Stores, name: str, changes: dict) -> Document:
    """Create a group's settings or change them (``None`` clears a setting)."""
    validate_groups([name])
    fields = {**changes, "updated_at": now_iso()}
    if name in stores.groups:
        stores.groups.update(name, fields)
    else:
        stores.groups.insert({"name": name, **fields})
    return get_group(stores, name)


def add_members(stores: Stores, name: str, device_ids: Iterable[str], *,
                actor: str | None = None) -> Document:
    validate_groups([name])
    devices = [stores.devices.get(d) for d in device_ids]  # all exist, or 404 before change
    for device in devices:
        if name not in device["groups"]:
            update_device(stores, device["id"], {"groups": [*device["groups"], name]},
                          actor=actor)
    return get_group(stores, name)


def remove_members(stores: Stores, name: str, device_ids: Iterable[str], *,
                   actor: str | None = None) -> int:
    """Take devices out of a group (those not in it are left as they are): how many were."""
    validate_groups([name])
    devices = [stores.devices.get(d) for d in device_ids]  # all exist, or 404 before change
    removed = 0
    for device in devices:
        if name in device["groups"]:
            update_device(stores, device["id"],
                          {"groups": [g for g in device["groups"] if g != name]}, actor=actor)
            removed += 1
    return removed


def remove_member(stores: Stores, name: str, device_id: str, *,
                  actor: str | None = None) -> Document:
    device = stores.devices.get(device_id)
    if name not in device["groups"]:
        raise NotFound(f"device {device_id} is not in group {name!r}", code="not_a_member")
    update_device(stores, device_id, {"groups": [g for g in device["groups"] if g != name]},
                  actor=actor)
    return describe(name, stores.groups.get(name) if name in stores.groups else None,
                    sorted(d["id"] for d in stores.devices.all()
                           if name in d.get("groups", ())))


def delete_group(stores: Stores, name: str, *, actor: str | None = None) -> Document:
    """Remove the group's settings and take every member out of it."""
    group = get_group(stores, name)
    for device_id in group["devices"]:
        device = stores.devices.get(device_id)
        update_device(stores, device_id,
                      {"groups": [g for g in device["groups"] if g != name]}, actor=actor)
    if name in stores.groups:
        stores.groups.delete(name)
    return group
