"""The central hub's side of the link: read each site's export, send commands to sites.

Each site's segments (``sites/exports/<site>/seg-<seq>.json``) are read in order, each
exactly once: the highest sequence number read is kept per site in the store, and a
segment at or below it is never read again, however often Syncthing delivers it. A
segment the site pruned before it arrived shows as a gap, and one that cannot be read
(not JSON, wrong shape) as a problem; neither stops the ones after it.

A command for a site is a file, ``sites/commands/<site>/<id>.json``, written atomically
with a fresh id; the centre learns what became of it from the site's export, and deletes
the file once its outcome is final (the site remembers the id, so it never runs twice).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from ..clock import iso_from_epoch
from ..errors import NotFound
from ..store import Stores, write_atomically
from .layout import COMMAND_FILE_RE, SEGMENT_RE, CentralFolders, check_name

log = logging.getLogger(__name__)

#: Problems kept per site (newest last).
PROBLEMS_KEPT = 10
#: Largest segment read; a bigger one is reported and skipped.
SEGMENT_MAX_BYTES = 1024 * 1024
FINAL_OUTCOMES = ("done", "refused", "interrupted")


def send_command(folders: CentralFolders, site: str, target: str, name: str,
                 args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a command file for ``site``; Syncthing carries it there."""
    check_name(site)
    folder = folders.site_commands(site)
    if not folder.is_dir():
        raise NotFound(f"no site {site!r}: add it first (dropsync central add-site)",
                       code="site_not_found")
    command = {"id": secrets.token_hex(8), "target": target, "name": name,
               "args": args or {}, "sent_at": iso_from_epoch(time.time())}
    write_atomically(folder / f"{command['id']}.json", json.dumps(command).encode(),
                     mode=0o644)
    return {**command, "site": site}


class CentralReader:
    def __init__(self, stores: Stores, folders: CentralFolders):
        self.stores = stores
        self.folders = folders

    def tick(self) -> None:
        for site in self.folders.sites():
            self.note_sent_commands(site)
            self.read_site(site)
        self.remove_finished_command_files()

    def site_record(self, site: str) -> dict[str, Any]:
        if site in self.stores.sites:
            return dict(self.stores.sites.get(site))
        return {"name": site, "last_seq": 0, "segments_read": 0, "missed": 0,
                "last_export_at": None, "last_export": None, "read_at": None,
                "state": None, "problems": []}

    def read_site(self, site: str) -> int:
        """Read the site's new segments in order; returns how many were read."""
        record = self.site_record(site)
        folder = self.folders.site_export(site)
        try:
            found = sorted((int(m[1]), p) for p in folder.iterdir()
                           if (m := SEGMENT_RE.match(p.name)))
        except OSError:
            return 0
        new = [(seq, path) for seq, path in found if seq > record["last_seq"]]
        if not new:
            return 0
        for seq, path in new:
            if record["last_seq"] and seq > record["last_seq"] + 1:
                record["missed"] += seq - record["last_seq"] - 1
            record["last_seq"] = seq
            try:
                segment = read_segment(path, seq)
            except ValueError as exc:
                self.note_problem(record, f"{path.name}: {exc}")
                continue
            record["segments_read"] += 1
            record["state"] = segment["state"]
            record["last_export_at"] = segment["written_at"]
            record["last_export"] = segment["written"]
            for outcome in segment["commands"]:
                self.apply_outcome(site, outcome, record)
        record["read_at"] = time.time()
        self.stores.sites.upsert(record)
        return len(new)

    def note_problem(self, record: dict[str, Any], problem: str) -> None:
        log.warning("site %s: %s", record["name"], problem)
        record["problems"] = [*record["problems"], problem][-PROBLEMS_KEPT:]

    def apply_outcome(self, site: str, outcome: Any, record: dict[str, Any]) -> None:
        if not isinstance(outcome, dict) or not isinstance(outcome.get("id"), str) \
                or not COMMAND_FILE_RE.match(outcome["id"] + ".json"):
            self.note_problem(record, f"an unreadable command outcome: {outcome!r:.120}")
            return
        known = self.stores.site_commands.get(outcome["id"]) \
            if outcome["id"] in self.stores.site_commands else {"id": outcome["id"]}
        self.stores.site_commands.upsert({
            **known, "site": site, "state": str(outcome.get("state")),
            "error": outcome.get("error"), "site_command_id": outcome.get("command_id"),
            "deliveries": outcome.get("deliveries") if isinstance(
                outcome.get("deliveries"), list) else [],
            "updated_at": iso_from_epoch(time.time())})

    def note_sent_commands(self, site: str) -> None:
        """Commands written to the site's folder (by ``dropsync central command``, with or
        without a hub running) that the store has not heard of yet."""
        try:
            paths = list(self.folders.site_commands(site).iterdir())
        except OSError:
            return
        for path in paths:
            match = COMMAND_FILE_RE.match(path.name)
            if not match or match[1] in self.stores.site_commands:
                continue
            try:
                spec = json.loads(path.read_bytes())
                spec = spec if isinstance(spec, dict) else {}
            except (OSError, ValueError):
                spec = {}
            self.stores.site_commands.insert({
                "id": match[1], "site": site, "state": "sent",
                "name": str(spec.get("name"))[:200], "target": str(spec.get("target"))[:200],
                "sent_at": spec.get("sent_at"), "deliveries": []})

    def remove_finished_command_files(self) -> None:
        for command in self.stores.site_commands.all():
            if command.get("state") in FINAL_OUTCOMES and not command.get("file_removed"):
                path = self.folders.site_commands(command["site"]) / f"{command['id']}.json"
                path.unlink(missing_ok=True)
                self.stores.site_commands.update(command["id"], {"file_removed": True})


def read_segment(path: Path, seq: int) -> dict[str, Any]:
    if path.stat().st_size > SEGMENT_MAX_BYTES:
        raise ValueError(f"larger than {SEGMENT_MAX_BYTES} bytes; skipped")
    try:
        segment = json.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"unreadable ({exc})") from None
    if not isinstance(segment, dict) or segment.get("seq") != seq \
            or not isinstance(segment.get("state"), dict) \
            or not isinstance(segment.get("commands"), list) \
            or not isinstance(segment.get("written"), int | float):
        raise ValueError("not an export segment (seq, written, state, commands)")
    return segment


def sites_overview(stores: Stores, folders: CentralFolders, silent_after_s: float,
                   now: float | None = None) -> list[dict[str, Any]]:
    """Every site as the Sites page and ``dropsync sites`` show it, silent ones flagged."""
    now = time.time() if now is None else now
    commands: dict[str, list[dict[str, Any]]] = {}
    for command in stores.site_commands.all():
        commands.setdefault(command["site"], []).append(command)
    result = []
    for site in sorted(set(folders.sites()) | {s["name"] for s in stores.sites.all()}):
        record = dict(stores.sites.get(site)) if site in stores.sites else \
            {"name": site, "last_export": None, "state": None, "problems": [],
             "segments_read": 0, "missed": 0, "last_seq": 0}
        age = now - record["last_export"] if record.get("last_export") else None
        state = record.get("state") or {}
        failed_packages = sum(1 for p in state.get("packages", []) if p.get("failed"))
        result.append({
            **record, "age_s": age, "silent": age is None or age > silent_after_s,
            "fleet": state.get("fleet", {}), "packages": state.get("packages", []),
            "failures": state.get("failures", []), "warnings": state.get("warnings", []),
            "activity": state.get("activity", []), "failed_packages": failed_packages,
            "commands": sorted(commands.get(site, []), key=lambda c: c.get("sent_at") or "",
                               reverse=True)})
    return result
