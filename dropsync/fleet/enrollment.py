"""Enrollment: a board with no token asks to join, an operator accepts it, and the token
reaches only the board that asked.

A board makes a random secret at first boot and keeps it. It enrolls with an enrollment
key (the credential of a board that has none), its hardware id (the MAC) and the SHA-256
of its secret; the hub keeps it **pending**. An operator accepts (choosing id, name and
groups) or rejects it, or many at once; a MAC on the preauthorised list is accepted as it
arrives. Once accepted, the board claims its token by showing the secret itself: the
token is handed out once, to the secret whose digest was enrolled. A replay, another
board with the same MAC (another secret), or an enrollment after the device exists gets
nothing, and the entry says so for the operator.

A board that lost its token (a factory reset makes a new secret) enrolls again; when its
device exists, the entry is a re-enrollment of that device: never accepted by itself
(not even when preauthorised), and accepting it gives the device a new token.

Bounded: at most ``ENROLL_PENDING_MAX`` entries wait at a time, a pending entry expires
after ``ENROLL_PENDING_TTL_S``, and the routes are rate limited per address, so a flood
cannot fill the disk. A pending board coming back within ``LAST_SEEN_WRITE_S`` writes
nothing.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import re
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..clock import now_iso, unix_seconds
from ..errors import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from ..store import Document, Stores
from .credentials import hash_token, issue_secret
from .devices import (
    DEFAULT_TYPE,
    record_event,
    record_events,
    register_device,
    rotate_token,
    validate_device_id,
    validate_groups,
)

STATES = ("pending", "accepted", "rejected", "claimed")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
#: A pending board re-enrolling more often than this refreshes its "last seen" in memory
#: only: a board retrying every few seconds must not rewrite the file each time.
LAST_SEEN_WRITE_S = 60.0
#: A board's enrollment or claim is a few hundred bytes of JSON: a larger body is refused
#: before it is read (anyone may send to these routes).
ENROLL_BODY_MAX_BYTES = 4096


def normal_mac(text: str) -> str:
    """``A4-CF-12-00-00-01`` or ``a4cf12000001`` -> ``a4:cf:12:00:00:01``; else an error."""
    digits = re.sub(r"[^0-9a-fA-F]", "", text or "").lower()
    mac = ":".join(digits[i:i + 2] for i in range(0, len(digits), 2))
    if len(digits) != 12 or not MAC_RE.fullmatch(mac):
        raise ValidationFailed("a hardware id is a MAC address, e.g. a4:cf:12:00:00:01",
                               {"hardware_id": [text]})
    return mac


def default_device_id(entry: Mapping[str, Any]) -> str:
    """The id an accepted board gets unless the operator names one: its name hint when
    that is a valid id, else ``esp-`` and its MAC's digits."""
    hint = (entry.get("name_hint") or "").strip()
    if hint:
        try:
            return validate_device_id(hint)
        except ValidationFailed:
            pass
    return "esp-" + entry["hardware_id"].replace(":", "")


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Enrollment:
    """Enrollment keys, pending boards, the preauthorised list and the token claims."""

    def __init__(self, stores: Stores, *, pending_max: int, pending_ttl_s: float,
                 retry_s: int):
        self.stores = stores
        self.pending_max = pending_max
        self.pending_ttl_s = pending_ttl_s
        self.retry_s = retry_s
        #: One change at a time: two claims of one token must not both get it.
        self.lock = threading.RLock()
        #: hardware id -> monotonic time a pending board was last seen, not yet written.
        self._seen: dict[str, float] = {}

    # -- enrollment keys -----------------------------------------------------------------
    def create_key(self, group: str | None = None, site: str | None = None,
                   label: str = "") -> tuple[Document, str]:
        """A new enrollment key (for a group, a site or the whole hub): shown this once."""
        groups = validate_groups([group]) if group else []
        record, key = issue_secret(self.stores.enroll_keys, label=label or "",
                                   group=groups[0] if groups else None, site=site or None)
        record_event(self.stores, "enroll_key.created", None, None, key_id=record["id"],
                     group=record["group"])
        return public_key(record), key

    def list_keys(self) -> list[Document]:
        return sorted((public_key(k) for k in self.stores.enroll_keys.all()),
                      key=lambda k: k["created_at"])

    def revoke_key(self, key_id: str) -> Document:
        try:
            record = self.stores.enroll_keys.delete(key_id)
        except NotFound:
            raise NotFound(f"enrollment key {key_id!r} not found",
                           code="no_such_enroll_key") from None
        record_event(self.stores, "enroll_key.revoked", None, None, key_id=key_id)
        return public_key(record)

    def _key_for(self, presented: str) -> Document:
        if not len(self.stores.enroll_keys):
            raise NotFound("enrollment is off: this hub has no enrollment key "
                           "(dropsync enroll-key new)", code="enrollment_off")
        try:
            return self.stores.enroll_keys.get_by("token_hash", hash_token(presented or ""))
        except NotFound:
            raise Unauthorized("unknown or revoked enrollment key",
                               code="bad_enroll_key") from None

    # -- a board asks ----------------------------------------------------------------------
    def enroll(self, request: Mapping[str, Any], address: str | None) -> dict[str, Any]:
        """A board's enrollment: ``pending`` (come back in ``retry_after_s``) or
        ``accepted`` (claim the token now). ``request`` is already shaped by the schema."""
        key = self._key_for(request["enroll_key"])
        mac = normal_mac(request["hardware_id"])
        digest = request["secret_sha256"].lower()
        with self.lock:
            self.expire()
            entry = self._find(mac)
            if entry is not None:
                return self._known(entry, digest, request, address)
            fields = {
                "hardware_id": mac, "board": request.get("board") or DEFAULT_TYPE,
                "firmware_version": request.get("firmware_version"),
                "sketch_md5": request.get("sketch_md5"),
                "name_hint": request.get("name_hint"), "secret_sha256": digest,
                "address": address, "key_id": key["id"], "group": key.get("group"),
                "site": key.get("site"), "first_seen": now_iso(), "last_seen": now_iso(),
                "refusals": [], "re_enrollment_of": None,
            }
            preauthorized = self._preauthorized(mac)
            if preauthorized is not None:
                entry = self.stores.enrollments.upsert({**fields, "state": "pending"})
                record_event(self.stores, "device.enrolled", None, None, hardware_id=mac,
                             preauthorized=True)
                entry = self._accept(entry, preauthorized.get("device_id"),
                                     preauthorized.get("name"),
                                     preauthorized.get("groups"), "preauthorized")
                return {"state": "accepted", "device_id": entry["device_id"]}
            if self.pending_count() >= self.pending_max:
                raise ServiceUnavailable(
                    f"{self.pending_max} boards are already waiting for an operator "
                    "(ENROLL_PENDING_MAX); try again later", code="pending_full")
            self.stores.enrollments.upsert({**fields, "state": "pending"})
            record_event(self.stores, "device.enrolled", None, None, hardware_id=mac,
                         board=fields["board"])
            return self.waiting()

    def waiting(self) -> dict[str, Any]:
        return {"state": "pending", "retry_after_s": self.retry_s}

    def _known(self, entry: Document, digest: str, request: Mapping[str, Any],
               address: str | None) -> dict[str, Any]:
        """An enrollment from a board the hub has an entry for."""
        mac, state = entry["hardware_id"], entry["state"]
        if state == "rejected":
            raise Forbidden("an operator rejected this board", code="rejected")
        same = hmac.compare_digest(entry["secret_sha256"], digest)
        if state == "claimed":
            if same:
                raise Gone("this board has claimed its token already; a factory reset "
                           "makes a new secret to enroll again", code="already_claimed")
            # A factory reset: a new secret for a device that exists. Pending again, as
            # a re-enrollment an operator must accept.
            device_id = entry.get("device_id")
            if device_id is not None and device_id not in self.stores.devices:
                device_id = None
            if self.pending_count() >= self.pending_max:
                raise ServiceUnavailable(
                    f"{self.pending_max} boards are already waiting for an operator "
                    "(ENROLL_PENDING_MAX); try again later", code="pending_full")
            self.stores.enrollments.update(mac, {
                "state": "pending", "secret_sha256": digest, "re_enrollment_of": device_id,
                "device_id": None, "first_seen": now_iso(), "last_seen": now_iso(),
                "address": address, "firmware_version": request.get("firmware_version"),
                "refusals": []})
            record_event(self.stores, "device.enrolled", device_id, None, hardware_id=mac,
                         re_enrollment=True)
            return self.waiting()
        if not same:
            self._refuse(entry, "another secret enrolled with this MAC", address)
            raise Conflict("this hardware id has enrolled with another secret",
                           code="secret_mismatch")
        if state == "accepted":
            return {"state": "accepted", "device_id": entry["device_id"]}
        self._touch(entry)
        return self.waiting()

    def _touch(self, entry: Document) -> None:
        now = time.monotonic()
        mac = entry["hardware_id"]
        if now - self._seen.get(mac, 0.0) >= LAST_SEEN_WRITE_S:
            self.stores.enrollments.update(mac, {"last_seen": now_iso()})
            self._seen[mac] = now

    def claim(self, hardware_id: str, secret: str, address: str | None) -> dict[str, Any]:
        """The token, once, to the board that proves the enrolled secret."""
        mac = normal_mac(hardware_id)
        with self.lock:
            entry = self._find(mac)
            if entry is None:
                raise NotFound("no enrollment for this hardware id",
                               code="unknown_hardware")
            if not hmac.compare_digest(entry["secret_sha256"], secret_digest(secret)):
                self._refuse(entry, "a claim with the wrong secret", address)
                raise Forbidden("the secret does not match the enrollment", code="bad_secret")
            if entry["state"] == "rejected":
                raise Forbidden("an operator rejected this board", code="rejected")
            if entry["state"] == "pending":
                self._touch(entry)
                return self.waiting()
            if entry["state"] == "claimed":
                self._refuse(entry, "a second claim of a token handed out before", address)
                raise Gone("the token was handed out already", code="already_claimed")
            device, token = rotate_token(self.stores, entry["device_id"], actor="enrollment")
            self.stores.enrollments.update(mac, {"state": "claimed", "claimed_at": now_iso(),
                                                 "claimed_from": address})
            record_event(self.stores, "device.claimed", device["id"], None, hardware_id=mac)
            return {"device_id": device["id"], "token": token, "hub_time": int(time.time())}

    def _refuse(self, entry: Document, why: str, address: str | None) -> None:
        """Note a refused request on the entry (the operator sees the latest few)."""
        refusals = (entry.get("refusals") or [])[-4:] + [
            {"at": now_iso(), "why": why, "address": address}]
        self.stores.enrollments.update(entry["hardware_id"], {"refusals": refusals})
        record_event(self.stores, "device.claim_refused", entry.get("device_id"), None,
                     hardware_id=entry["hardware_id"], reason=why)

    # -- operators -----------------------------------------------------------------------
    def accept(self, hardware_ids: Iterable[str], *, device_id: str | None = None,
               name: str | None = None, groups: Iterable[str] | None = None,
               actor: str | None = None) -> list[Document]:
        """Accept pending boards, all or none: ``device_id`` and ``name`` only for one;
        ``groups`` (default: the enrollment key's group) for each."""
        macs = [normal_mac(h) for h in hardware_ids]
        if not macs:
            raise ValidationFailed("name at least one board", code="no_boards")
        if len(macs) > 1 and (device_id or name):
            raise ValidationFailed("an id or a name is for one board at a time")
        with self.lock:
            entries = [self._pending(mac) for mac in macs]
            if device_id is not None:
                validate_device_id(device_id)
            if groups is not None:
                groups = validate_groups(groups)
            chosen = [device_id or e.get("re_enrollment_of") or default_device_id(e)
                      for e in entries]
            taken = [d for d, e in zip(chosen, entries, strict=True)
                     if d in self.stores.devices and d != e.get("re_enrollment_of")]
            if taken or len(set(chosen)) < len(chosen):
                raise Conflict(f"device id {(taken or chosen)[0]!r} is taken; choose another",
                               code="already_exists")
            return [public_entry(self._accept(e, d, name, groups, actor))
                    for e, d in zip(entries, chosen, strict=True)]

    def _accept(self, entry: Document, device_id: str | None, name: str | None,
                groups: Iterable[str] | None, actor: str | None) -> Document:
        mac = entry["hardware_id"]
        existing = entry.get("re_enrollment_of")
        if existing and existing in self.stores.devices:
            device_id = existing  # its token is rotated when the board claims it
        else:
            device_id = device_id or default_device_id(entry)
            chosen = list(groups) if groups is not None else \
                [entry["group"]] if entry.get("group") else []
            register_device(self.stores, device_id, name=name or entry.get("name_hint"),
                            type=entry.get("board") or DEFAULT_TYPE, groups=chosen,
                            actor=actor)
        updated = self.stores.enrollments.update(mac, {
            "state": "accepted", "device_id": device_id, "accepted_at": now_iso(),
            "accepted_by": actor})
        self._seen.pop(mac, None)
        record_event(self.stores, "device.accepted", device_id, actor, hardware_id=mac)
        return updated

    def reject(self, hardware_ids: Iterable[str], actor: str | None = None) -> list[Document]:
        macs = [normal_mac(h) for h in hardware_ids]
        if not macs:
            raise ValidationFailed("name at least one board", code="no_boards")
        with self.lock:
            for mac in macs:
                self._pending(mac)
            rejected = [public_entry(self.stores.enrollments.update(
                mac, {"state": "rejected", "rejected_at": now_iso(), "rejected_by": actor}))
                for mac in macs]
            record_events(self.stores, "device.rejected", [None] * len(macs), actor,
                          hardware_ids=macs)
            return rejected

    def forget(self, hardware_id: str) -> Document:
        """Drop an entry (a rejected board may then enroll anew)."""
        with self.lock:
            return public_entry(self.stores.enrollments.delete(normal_mac(hardware_id)))

    def _pending(self, mac: str) -> Document:
        entry = self._find(mac)
        if entry is None:
            raise NotFound(f"no enrollment for {mac}", code="unknown_hardware")
        if entry["state"] != "pending":
            raise Conflict(f"{mac} is {entry['state']}, not pending", code="not_pending")
        return entry

    # -- the preauthorised list ----------------------------------------------------------
    def preauthorize(self, boards: Iterable[Mapping[str, Any]],
                     actor: str | None = None) -> list[Document]:
        """Add MACs to accept on arrival (each with optional groups, name and id); all or
        none. A MAC listed again gets its new groups, name and id."""
        records = []
        for board in boards:
            device_id = board.get("device_id") or None
            if device_id:
                validate_device_id(device_id)
            records.append({"hardware_id": normal_mac(board.get("hardware_id", "")),
                            "groups": validate_groups(board.get("groups") or []),
                            "name": board.get("name") or None, "device_id": device_id,
                            "added_at": now_iso(), "added_by": actor})
        with self.lock:
            stored = [self.stores.preauthorized.upsert(r) for r in records]
        record_event(self.stores, "device.preauthorized", None, actor, count=len(stored))
        return stored

    def list_preauthorized(self) -> list[Document]:
        return sorted(self.stores.preauthorized.all(), key=lambda r: r["hardware_id"])

    def unpreauthorize(self, hardware_id: str) -> Document:
        return self.stores.preauthorized.delete(normal_mac(hardware_id))

    def _preauthorized(self, mac: str) -> Document | None:
        return self.stores.preauthorized.get(mac) if mac in self.stores.preauthorized \
            else None

    # -- reads -------------------------------------------------------------------------
    def list(self, state: str | None = None) -> list[Document]:
        with self.lock:
            self.expire()
            found = [public_entry(e) for e in self.stores.enrollments.all()
                     if state in (None, e["state"])]
        return sorted(found, key=lambda e: e["first_seen"])

    def pending_count(self) -> int:
        return sum(1 for e in self.stores.enrollments.all() if e["state"] == "pending")

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for entry in self.stores.enrollments.all():
            counts[entry["state"]] += 1
        return counts

    def expire(self) -> int:
        """Drop pending entries not seen for ``pending_ttl_s``."""
        cutoff = time.time() - self.pending_ttl_s
        stale = [e["hardware_id"] for e in self.stores.enrollments.all()
                 if e["state"] == "pending" and (unix_seconds(e["last_seen"]) or 0) < cutoff]
        return self.stores.enrollments.delete_many(stale) if stale else 0

    def _find(self, mac: str) -> Document | None:
        return self.stores.enrollments.get(mac) if mac in self.stores.enrollments else None


def public_key(record: Mapping[str, Any]) -> Document:
    return {k: v for k, v in record.items() if k != "token_hash"}


def public_entry(entry: Mapping[str, Any]) -> Document:
    """An enrollment as operators see it: the secret's digest shortened to a fingerprint
    they can compare with what the board prints."""
    shown = dict(entry)
    shown["secret_fingerprint"] = shown.pop("secret_sha256", "")[:12]
    return shown


def read_preauthorized_csv(text: str) -> list[dict[str, Any]]:
    """Rows of ``mac,groups,name,id`` (a header row naming them is optional; groups split
    on spaces or semicolons) -> boards for ``preauthorize``."""
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if rows and rows[0] and rows[0][0].strip().lower() in ("mac", "hardware_id"):
        rows = rows[1:]
    boards = []
    for number, row in enumerate(rows, 1):
        cells = [c.strip() for c in row] + [""] * 4
        if not cells[0]:
            raise ValidationFailed(f"row {number}: no MAC", {"row": number})
        boards.append({"hardware_id": cells[0],
                       "groups": [g for g in re.split(r"[;\s]+", cells[1]) if g],
                       "name": cells[2] or None, "device_id": cells[3] or None})
    return boards
