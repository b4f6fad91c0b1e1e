"""A site hub's side of the link: take the centre's commands in, export the site's state.

Commands arrive as files (``sites/commands/<id>.json``) and stay there until the centre
deletes them, so each is seen many times (every tick, again after a link comes back):
its id is remembered in the store *before* it is queued, and a remembered id is never
queued again. A crash between the two loses that command rather than running it twice;
the export says so (state ``interrupted``).

The export is a series of segments, ``sites/export/seg-<seq>.json``, each written once
(atomically: temp file, fsync, rename) and never rewritten: the site's state now (fleet,
packages, failures, warnings, recent activity, each list capped) and the central
commands whose outcome changed since the last segment. A segment is written when
something changed (looked at every ``SITES_CHECK_S``) or every ``SITES_EXPORT_S`` anyway,
so the centre can tell a quiet site from a silent one. Only the newest
``SITES_EXPORT_KEEP`` segments are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from ..clock import iso_from_epoch
from ..errors import DropSyncError
from ..relay.commands import FINAL_STATES, Target
from ..store import write_atomically
from .layout import COMMAND_FILE_RE, SEGMENT_RE, SiteFolders, segment_name

log = logging.getLogger(__name__)

EXPORT_FACT = "sites_export"
#: How many items each list of an export holds at most (newest first).
LIST_CAP = 20
PACKAGE_CAP = 100
TEXT_CAP = 200
#: Largest command file taken in; a bigger one is refused (and reported).
COMMAND_FILE_MAX_BYTES = 16384


def capped_text(value: Any) -> Any:
    return value[:TEXT_CAP] if isinstance(value, str) else value


def site_state(hub: Any) -> dict[str, Any]:
    """What the centre sees of this site: small, every list capped."""
    from ..dashboard.views import fleet, fleet_counts, package_progress

    packages = [{"id": p["id"], "slot": p["slot"], "version": p["version"],
                 "source": p.get("source"), "targets": p["targets"], "have": p["have"],
                 "downloading": p["downloading"], "failed": p["failed"],
                 "percent": p["percent"]} for p in package_progress(hub)[:PACKAGE_CAP]]
    failed = hub.stores.history["commands"].find(
        limit=LIST_CAP, where=lambda r: r.get("state") == "failed")
    warnings = hub.stores.history["messages"].find(
        limit=LIST_CAP, where=lambda r: r.get("level") in ("warning", "error", "critical"))
    activity = hub.stores.history["events"].find(limit=LIST_CAP)
    return {
        "fleet": fleet_counts(fleet(hub)),
        "packages": packages,
        "failures": [{"device_id": r.get("device_id"), "command_id": r.get("command_id"),
                      "name": r.get("name"), "reason": capped_text(r.get("reason")),
                      "at": r.get("ended_at")} for r in failed],
        "warnings": [{"device_id": r.get("device_id"), "level": r.get("level"),
                      "text": capped_text(r.get("text")), "at": r.get("received_at")}
                     for r in warnings],
        "activity": [{"kind": r.get("kind"), "device_id": r.get("device_id"),
                      "at": r.get("at")} for r in activity],
    }


class SiteExporter:
    def __init__(self, hub: Any, folders: SiteFolders, settings: dict[str, Any]):
        self.hub = hub
        self.stores = hub.stores
        self.folders = folders
        self.export_s = settings["SITES_EXPORT_S"]
        self.keep = settings["SITES_EXPORT_KEEP"]

    def tick(self) -> None:
        self.take_commands()
        self.export_if_due()

    # -- commands from the centre --------------------------------------------------------
    def take_commands(self) -> list[str]:
        """Queue every command file not taken in before; returns the ids queued now."""
        queued = []
        try:
            entries = sorted(self.folders.commands.iterdir())
        except OSError:
            return queued
        for path in entries:
            match = COMMAND_FILE_RE.match(path.name)
            if not match or not path.is_file() or match[1] in self.stores.central_commands:
                continue
            if self.take_command(match[1], path):
                queued.append(match[1])
        return queued

    def take_command(self, central_id: str, path: Any) -> bool:
        now = time.time()
        record = {"id": central_id, "received_at": iso_from_epoch(now), "state": "taking",
                  "command_id": None, "error": None}
        try:
            if path.stat().st_size > COMMAND_FILE_MAX_BYTES:
                raise ValueError(f"larger than {COMMAND_FILE_MAX_BYTES} bytes")
            spec = json.loads(path.read_bytes())
            if not isinstance(spec, dict) or spec.get("id") != central_id:
                raise ValueError("not a command object whose id is its file name")
            target, name = spec.get("target"), spec.get("name")
            args = spec.get("args") or {}
            if not isinstance(target, str) or not isinstance(name, str) or not name \
                    or not isinstance(args, dict):
                raise ValueError("a command needs a target, a name and args (an object)")
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            log.warning("central command %s refused: %s", path.name, exc)
            self.stores.central_commands.insert({**record, "state": "refused",
                                                 "error": capped_text(str(exc))})
            return False
        record.update(name=capped_text(name), target=capped_text(target))
        self.stores.central_commands.insert(record)  # remembered before it is queued
        try:
            command = self.hub.commands.create(Target.parse(target), name, args=args,
                                               actor=f"central:{central_id}")
        except DropSyncError as exc:
            log.warning("central command %s refused: %s", central_id, exc)
            self.stores.central_commands.update(central_id, {
                "state": "refused", "error": capped_text(str(exc))})
            return False
        self.stores.central_commands.update(central_id, {"state": "queued",
                                                         "command_id": command["id"]})
        log.info("central command %s queued as command %s", central_id, command["id"])
        return True

    def command_outcomes(self) -> list[dict[str, Any]]:
        """Central commands whose outcome changed since the last export, marked as sent."""
        changed = []
        for record in self.stores.central_commands.all():
            if record.get("exported_final"):
                continue
            view = self.command_view(record)
            digest = digest_of(view)
            if digest == record.get("exported"):
                continue
            changed.append((record["id"], digest, view))
        return changed

    def command_view(self, record: dict[str, Any]) -> dict[str, Any]:
        view = {"id": record["id"], "state": record["state"], "error": record.get("error"),
                "command_id": record.get("command_id"), "deliveries": []}
        if record["state"] == "taking":
            view["state"] = "interrupted"  # the hub stopped between remembering and queueing
            view["error"] = "the site stopped while taking it in; send it again (a new id)"
        elif record["state"] == "queued":
            try:
                command = self.hub.commands.describe(record["command_id"])
            except DropSyncError:
                return view
            view["deliveries"] = [
                {"device_id": d["device_id"], "state": d["state"],
                 "result": d.get("result"), "reason": capped_text(d.get("reason"))}
                for d in command["deliveries"][:LIST_CAP]]
            if command["deliveries"] and all(d["state"] in FINAL_STATES
                                             for d in command["deliveries"]):
                view["state"] = "done"
        return view

    # -- the export --------------------------------------------------------------------
    def export_if_due(self, force: bool = False) -> int | None:
        """Write the next segment if the state changed or the period is up; its seq."""
        fact = self.stores.meta.get(EXPORT_FACT) if EXPORT_FACT in self.stores.meta \
            else {"name": EXPORT_FACT, "seq": 0, "digest": None, "written": 0.0}
        state = site_state(self.hub)
        outcomes = self.command_outcomes()
        digest = digest_of({"state": state, "commands": [o[2] for o in outcomes]})
        now = time.time()
        if not force and not outcomes and digest == fact["digest"] \
                and now - fact["written"] < self.export_s:
            return None
        seq = max(fact["seq"], self.newest_segment()) + 1
        segment = {"format": 1, "seq": seq, "written_at": iso_from_epoch(now),
                   "written": now, "state": state, "commands": [o[2] for o in outcomes]}
        self.folders.export.mkdir(parents=True, exist_ok=True)
        write_atomically(self.folders.export / segment_name(seq),
                         json.dumps(segment, separators=(",", ":")).encode(), mode=0o644)
        self.stores.meta.upsert({"name": EXPORT_FACT, "seq": seq, "digest": digest,
                                 "written": now})
        for central_id, command_digest, view in outcomes:
            self.stores.central_commands.update(central_id, {
                "exported": command_digest,
                "exported_final": view["state"] in ("done", "refused", "interrupted")})
        self.prune()
        return seq

    def segments(self) -> list[tuple[int, Any]]:
        try:
            found = [(int(m[1]), p) for p in self.folders.export.iterdir()
                     if (m := SEGMENT_RE.match(p.name))]
        except OSError:
            return []
        return sorted(found)

    def newest_segment(self) -> int:
        found = self.segments()
        return found[-1][0] if found else 0

    def prune(self) -> None:
        """Keep the newest ``SITES_EXPORT_KEEP`` segments; the centre has read the rest, or
        counts them as missed."""
        found = self.segments()
        for _, path in found[:max(0, len(found) - self.keep)]:
            path.unlink(missing_ok=True)


def digest_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
