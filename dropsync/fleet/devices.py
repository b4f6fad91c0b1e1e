"""The device registry: who may talk to the hub, and with which token.

Every change is recorded in the ``events`` history, so an operator can see who registered,
rotated or removed which device and when.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..clock import now_iso
from ..errors import Conflict, Forbidden, NotFound, StorageFull, Unauthorized, ValidationFailed
from ..store import Document, Stores
from .credentials import hash_token, new_token, tokens_match

log = logging.getLogger(__name__)

#: Device ids: MAC addresses (with colons) or configured names. Every name pattern is
#: checked with ``fullmatch`` (``schemas.FullMatch`` in a schema): ``$`` after ``match``
#: lets a trailing newline through. The anchors stay for the OpenAPI document's patterns.
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_:-]{1,64}$")
GROUP_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_TYPE = "esp8266"
#: Seed tokens shorter than this are refused on import unless forced: they can be guessed.
WEAK_TOKEN_LENGTH = 16


#: Ids that name targets, not devices (commands and staging folders use them).
RESERVED_ID_RE = re.compile(r"all|group[-:].*", re.IGNORECASE | re.DOTALL)


def validate_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise ValidationFailed(
            "device id must be 1-64 letters, digits, '-', '_' or ':'", {"id": [device_id]})
    if RESERVED_ID_RE.fullmatch(device_id):
        raise ValidationFailed("'all' and ids starting with 'group-' or 'group:' name "
                               "targets, not devices", {"id": [device_id]})
    return device_id


def validate_groups(groups: Iterable[str]) -> list[str]:
    result: list[str] = []
    for group in groups:
        if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
            raise ValidationFailed("group names must be 1-64 letters, digits, '-' or '_'",
                                   {"groups": [group]})
        if group not in result:
            result.append(group)
    return result


def record_event(stores: Stores, kind: str, device_id: str | None, actor: str | None,
                 **details: Any) -> None:
    """Add to the audit trail, after the change itself is stored.

    Best effort: when the change is on disk but its audit line cannot be (disk full), the
    caller must still hear that the change happened, or a device would exist whose token
    nobody was shown.
    """
    record_events(stores, kind, [device_id], actor, **details)


def record_events(stores: Stores, kind: str, device_ids: list[str | None], actor: str | None,
                  **details: Any) -> None:
    """``record_event`` for several devices at once: one history write for all."""
    at = now_iso()
    try:
        stores.history["events"].append_many([
            {"at": at, "kind": kind, "device_id": device_id, "actor": actor, **details}
            for device_id in device_ids])
    except (StorageFull, OSError):
        log.error("could not record event %s for %s", kind, ", ".join(map(str, device_ids)),
                  exc_info=True)


def find_events(stores: Stores, *, kind: str = "", device: str = "",
                before: int | None = None, limit: int = 50,
                scan: int = 20_000) -> dict[str, Any]:
    """A page of the audit trail, newest first, by kind prefix and device (any part of its
    id, in any case). A filtered page looks through at most ``scan`` events, so a rare
    match cannot make one request read the whole history; ``next_before`` continues where
    it stopped (None: no more)."""
    device = device.lower()
    log = stores.history["events"]
    high = log.last_seq + 1 if before is None else before
    low = max(0, high - scan - 1)

    def matches(record: dict[str, Any]) -> bool:
        return (not kind or str(record.get("kind", "")).startswith(kind)) and \
            (not device or device in str(record.get("device_id") or "").lower())

    where = matches if kind or device else None
    events = log.find(before_seq=high, after_seq=low, limit=limit + 1, where=where)
    if len(events) > limit:
        events = events[:limit]
        next_before = events[-1]["seq"]
    else:  # the scanned stretch is done: older ones lie below it, if any are kept
        first_kept = log.last_seq - len(log) + 1
        next_before = low + 1 if low > 0 and low >= first_kept else None
    return {"events": events, "next_before": next_before}


def get_device(stores: Stores, device_id: str) -> Document:
    return stores.devices.get(device_id)


def list_devices(stores: Stores) -> list[Document]:
    return sorted(stores.devices.all(), key=lambda d: d["id"])


def register_device(stores: Stores, device_id: str, *, name: str | None = None,
                    type: str = DEFAULT_TYPE, groups: Iterable[str] = (),
                    actor: str | None = None) -> tuple[Document, str]:
    """Create a device and return it with its token, the only time the token is shown."""
    validate_device_id(device_id)
    token = new_token()
    now = now_iso()
    device = stores.devices.insert({
        "id": device_id, "name": name or device_id, "type": type,
        "groups": validate_groups(groups), "enabled": True,
        "token_hash": hash_token(token), "created_at": now, "updated_at": now,
    })
    record_event(stores, "device.registered", device_id, actor)
    return device, token


def update_device(stores: Stores, device_id: str, changes: Mapping[str, Any], *,
                  actor: str | None = None) -> Document:
    allowed = {"name", "type", "groups", "enabled", "poll_interval_s"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationFailed("these fields cannot be changed", sorted(unknown))
    fields = dict(changes)
    if "groups" in fields:
        fields["groups"] = validate_groups(fields["groups"])
    fields["updated_at"] = now_iso()
    device = stores.devices.update(device_id, fields)
    if "enabled" in changes:
        kind = "device.enabled" if changes["enabled"] else "device.disabled"
        record_event(stores, kind, device_id, actor)
    return device


def rotate_token(stores: Stores, device_id: str, *,
                 actor: str | None = None) -> tuple[Document, str]:
    token = new_token()
    device = stores.devices.update(device_id, {
        "token_hash": hash_token(token), "updated_at": now_iso(), "token_rotated_at": now_iso(),
    })
    record_event(stores, "device.token_rotated", device_id, actor)
    return device, token


def delete_device(stores: Stores, device_id: str, *, actor: str | None = None) -> Document:
    device = stores.devices.delete(device_id)
    stores.liveness.forget(device_id)
    stores.health.forget(device_id)
    record_event(stores, "device.deleted", device_id, actor)
    return device


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    #: Existing devices whose token was replaced (only when asked to).
    updated: list[str] = field(default_factory=list)
    #: Existing devices with another token, left as they were.
    skipped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    weak: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{len(self.added)} added, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged")
        if self.updated:
            text += f"; tokens replaced for {', '.join(self.updated)}"
        if self.skipped:
            text += (f"; {len(self.skipped)} skipped, already registered with another "
                     f"token (replace them with --replace): {', '.join(self.skipped)}")
        if self.weak:
            text += (f"; {len(self.weak)} with tokens shorter than {WEAK_TOKEN_LENGTH} "
                     f"characters, imported because forced: rotate them "
                     f"({', '.join(self.weak)})")
        return text


def import_device_tokens(stores: Stores, tokens: Mapping[str, str], *,
                         replace: bool = False, force: bool = False,
                         actor: str | None = None) -> ImportResult:
    """Merge a seed-style ``{device_id: token}`` map; tokens are hashed, never stored.

    A device that already exists with another token keeps it unless ``replace``: a
    registered node must not stop working because an old seed file was imported. Tokens
    shorter than ``WEAK_TOKEN_LENGTH`` are refused unless ``force``. Nothing is written
    when anything is refused.
    """
    for device_id, token in tokens.items():
        validate_device_id(device_id)
        if not isinstance(token, str) or not token:
            raise ValidationFailed("every token must be a non-empty string", {device_id: token})
    weak = sorted(d for d, token in tokens.items() if len(token) < WEAK_TOKEN_LENGTH)
    if weak and not force:
        raise ValidationFailed(
            f"tokens shorter than {WEAK_TOKEN_LENGTH} characters can be guessed; give "
            f"{', '.join(weak)} longer tokens, or import anyway with force (dropsync device "
            "import --force) and rotate them soon", {"weak": weak}, code="weak_tokens")
    owners: dict[str, str] = {}
    for device_id, token in tokens.items():
        token_hash = hash_token(token)
        if token_hash in owners:
            raise ValidationFailed("two devices cannot share a token",
                                   sorted([owners[token_hash], device_id]))
        owners[token_hash] = device_id
        try:
            holder = stores.devices.get_by("token_hash", token_hash)["id"]
        except NotFound:
            continue
        if holder != device_id:
            raise Conflict(f"the token given for {device_id} is already {holder}'s",
                           code="token_in_use")
    result = ImportResult(weak=weak)
    now = now_iso()
    # New devices in one write of devices.json and one of the history: a fleet's seed
    # file written one device at a time rewrote the whole file per device.
    result.added = [device_id for device_id in tokens if device_id not in stores.devices]
    stores.devices.insert_many({
        "id": device_id, "name": device_id, "type": DEFAULT_TYPE, "groups": [],
        "enabled": True, "token_hash": hash_token(tokens[device_id]), "created_at": now,
        "updated_at": now} for device_id in result.added)
    if result.added:
        record_events(stores, "device.imported", result.added, actor)
    added = set(result.added)
    for device_id, token in tokens.items():
        if device_id in added:
            continue
        if tokens_match(stores.devices.get(device_id)["token_hash"], token):
            result.unchanged.append(device_id)
        elif not replace:
            result.skipped.append(device_id)
        else:
            stores.devices.update(device_id, {"token_hash": hash_token(token),
                                              "updated_at": now_iso()})
            record_event(stores, "device.token_imported", device_id, actor)
            result.updated.append(device_id)
    return result


class RefusedTokens:
    """Requests that named a registered device with a token that is not its own (a node
    left on a token rotated out, a copy of an old config): counted in memory for the
    device's page, where "offline" alone would hide that the node is trying."""

    def __init__(self) -> None:
        self._by_device: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def note(self, device_id: str, address: str) -> None:
        with self._lock:
            seen = self._by_device.setdefault(device_id, {"count": 0, "first_at": time.time()})
            seen.update(count=seen["count"] + 1, last_at=time.time(), address=address)

    def of(self, device_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._by_device.get(device_id)
            return dict(found) if found else None

    def forget(self, device_id: str) -> None:
        with self._lock:
            self._by_device.pop(device_id, None)


def authenticate_device(stores: Stores, device_id: str, token: str | None) -> Document:
    """The device ``token`` belongs to, if it may act on ``device_id``.

    401 when the token is missing or belongs to no device, 403 when it is another device's
    token or the device is disabled.
    """
    if not token:
        raise Unauthorized("device token required: send 'Authorization: Bearer <token>' "
                           "or 'X-Device-Token: <token>'", code="missing_credentials")
    try:
        device = stores.devices.get(device_id)
    except NotFound:
        device = None
    if device is not None and tokens_match(device["token_hash"], token):
        if not device["enabled"]:
            raise Forbidden(f"device {device_id} is disabled", code="device_disabled")
        return device
    try:
        stores.devices.get_by("token_hash", hash_token(token))
    except NotFound:
        raise Unauthorized("invalid device token", code="invalid_token") from None
    raise Forbidden("this token belongs to another device", code="wrong_device")
