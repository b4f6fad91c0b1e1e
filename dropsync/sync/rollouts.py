"""Rollouts: one package delivered to a fleet in waves that stop by themselves.

A rollout takes one package (a firmware image or a file) and a target (a device, a
group, ``all``, or a filter on inventory fields) and splits the devices it reaches into
waves: a canary of N devices, then cumulative percentages (10, 50, 100). Which device
goes in which wave is decided once, at creation, and stored with the rollout, so neither
a restart nor a newly registered device reshuffles it.

``may_see(device_id, package)`` is the one answer to "may this device be offered this
package now?": manifests, download authorisation and the stock updaters' route all ask
it (through ``PackageCatalog.offered``). A package under a rollout is offered only to the
devices of waves that have started; a finished rollout opens it to everyone it reaches; a
draft (what a staged firmware image becomes by default, ``STAGING_RELEASE``) to nobody.

Progress comes from what devices report (``reported``: ``applied`` for an image,
``verified``/``applied`` for a file, ``failed``), from the stock updater's next request
carrying the new image's digest (which the route records as ``applied``), and from a
periodic ``tick`` that fails devices past their deadline, pauses a wave past its error
threshold, and starts the next wave once a wave met its success threshold and soaked.
States follow hawkBit: scheduled, running, paused, finished, aborted (plus draft); a
wave is waiting, running, succeeded or failed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..clock import now_iso
from ..errors import Conflict, NotFound, ValidationFailed
from ..fleet.devices import record_event
from ..store import Document, Stores
from .firmware_images import is_firmware_path
from .packages import GROUP_PREFIX, Catalog

log = logging.getLogger(__name__)

STATES = ("draft", "scheduled", "running", "paused", "finished", "aborted")
WAVE_STATES = ("waiting", "running", "succeeded", "failed")
#: Rollouts whose waves may still move.
OPEN_STATES = ("draft", "scheduled", "running", "paused")
TARGET_KINDS = ("all", "device", "group", "filter")
FILTER_FIELDS = ("type", "firmware_version", "group")
#: What a rollout does where its operator did not say: one canary, then 10, 50 and 100%
#: of the target; every device of a wave must succeed, more than 10% failing pauses it.
#: The admin API, the CLI and the dashboard's form all start from these.
DEFAULTS: dict[str, Any] = {"canary": 1, "percents": [10.0, 50.0, 100.0],
                            "success_threshold": 1.0, "error_threshold": 0.1,
                            "soak_s": 300.0, "deadline_s": 3600.0}
#: A daily window, in the hub's local time: ``HH:MM-HH:MM`` (it may span midnight).
WINDOW_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$"


def kind_of(package: Mapping[str, Any]) -> str:
    return "firmware" if is_firmware_path(package["path"]) else "file"


def parse_target(text: str) -> dict[str, Any]:
    """A target as people type it: ``all``, ``group-<name>``, a device id, or a filter
    ``type=esp32,group=pump`` (the CLI's ``--target``, the dashboard's form)."""
    text = text.strip()
    if text in ("", "all"):
        return {"kind": "all"}
    if "=" in text:
        pairs = (part.partition("=") for part in text.split(","))
        return {"kind": "filter", "filter": {k.strip(): v.strip() for k, _, v in pairs}}
    if text.startswith(GROUP_PREFIX):
        return {"kind": "group", "group": text[len(GROUP_PREFIX):]}
    return {"kind": "device", "device": text}


def parse_percents(text: str) -> list[float]:
    """``10,50,100`` -> [10.0, 50.0, 100.0]."""
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError("a comma-separated list of numbers, e.g. 10,50,100") from None


def wave_order(device_ids: Iterable[str], salt: str) -> list[str]:
    """The order devices join waves in: a shuffle fixed by ``salt`` (the image's
    SHA-256), so a canary is no longer always the device whose id sorts first."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{salt}:{d}".encode()).digest())


def wave_sizes(total: int, canary: int, percents: list[float]) -> list[tuple[str, int]]:
    """(name, how many new devices) per wave; waves that would add nobody are left out."""
    waves: list[tuple[str, int]] = []
    placed = min(canary, total)
    if placed:
        waves.append(("canary", placed))
    for percent in percents:
        upto = min(total, math.ceil(total * percent / 100))
        if upto > placed:
            waves.append((f"{percent:g}%", upto - placed))
            placed = upto
    return waves


def minute_of(clock_text: str) -> int:
    hours, minutes = clock_text.split(":")
    return int(hours) * 60 + int(minutes)


def in_window(window: str | None, now: float) -> bool:
    """Whether ``now`` falls in the daily ``window`` (``HH:MM-HH:MM``, the hub's local
    time; an end before the start spans midnight). No window: always."""
    if not window:
        return True
    start, end = (minute_of(part) for part in window.split("-"))
    local = time.localtime(now)
    minute = local.tm_hour * 60 + local.tm_min
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end


def matches_target(target: Mapping[str, Any], device: Mapping[str, Any],
                   firmware_version: str | None) -> bool:
    kind = target["kind"]
    if kind == "all":
        return True
    if kind == "device":
        return device["id"] == target["device"]
    if kind == "group":
        return target["group"] in (device.get("groups") or [])
    wanted = target.get("filter") or {}
    if "type" in wanted and str(device.get("type") or "").lower() != wanted["type"].lower():
        return False
    if "group" in wanted and wanted["group"] not in (device.get("groups") or []):
        return False
    return "firmware_version" not in wanted or firmware_version == wanted["firmware_version"]


def wave_counts(rollout: Mapping[str, Any], wave: Mapping[str, Any]) -> dict[str, int]:
    states = [rollout["devices"][d]["state"] for d in wave["devices"]]
    return {"size": len(states), "succeeded": states.count("succeeded"),
            "failed": states.count("failed"), "pending": states.count("pending")}


class Rollouts:
    """Every rollout, the gate they put on packages, and how their waves move."""

    def __init__(self, stores: Stores, catalog: Callable[[], Catalog],
                 release: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time):
        self.stores = stores
        self.table = stores.rollouts
        self.catalog = catalog
        self.release = dict(release or {"file": "publish", "firmware": "publish"})
        self.clock = clock
        self.lock = threading.RLock()
        #: Rises whenever who may see what changes; manifests cached before are stale.
        self.generation = 0
        self._gates: dict[str, tuple[int, frozenset[str] | None]] = {}
        self._rebuild_gates()

    # -- the gate ----------------------------------------------------------------------
    def may_see(self, device_id: str, package: Mapping[str, Any]) -> bool:
        """Whether ``device_id`` may be offered ``package`` now."""
        gate = self._gates.get(package["id"])
        if gate is None or gate[0] != package["version"]:
            return True
        return gate[1] is None or device_id in gate[1]

    def _rebuild_gates(self) -> None:
        """Per package, the latest rollout of its newest version decides who sees it."""
        latest: dict[str, Document] = {}
        for rollout in self.table.all():
            known = latest.get(rollout["package_id"])
            if known is None or (rollout["package_version"], rollout["created"]) > \
                    (known["package_version"], known["created"]):
                latest[rollout["package_id"]] = rollout
        gates: dict[str, tuple[int, frozenset[str] | None]] = {}
        for package_id, rollout in latest.items():
            members: frozenset[str] | None
            if rollout["state"] == "finished":
                members = None
            else:
                members = frozenset(d for wave in rollout["waves"]
                                    if wave["state"] != "waiting" for d in wave["devices"])
            gates[package_id] = (rollout["package_version"], members)
        if gates != self._gates:  # a report that opens no wave rebuilds no manifest
            self._gates = gates
            self.generation += 1

    # -- what staging and devices tell us ------------------------------------------------
    def publishing(self, package: Mapping[str, Any], release: str | None = None) -> None:
        """A new version of ``package`` is stored, not yet offered: rollouts of its older
        versions end, and when ``release`` (else ``STAGING_RELEASE`` for its kind) says
        draft, it waits in a draft."""
        with self.lock:
            for rollout in self.table.all():
                if rollout["package_id"] == package["id"] and \
                        rollout["package_version"] < package["version"] and \
                        rollout["state"] in OPEN_STATES:
                    self._set_state(rollout, "aborted", None,
                                    f"superseded by version {package['version']}")
                    self._save(rollout)
            if (release or self.release.get(kind_of(package))) == "draft":
                now = self.clock()
                self.table.insert({
                    **self._base(package, now), "state": "draft",
                    "reason": "staged: waiting for an operator to start a rollout"})
                record_event(self.stores, "rollout.draft", None, None,
                             package_id=package["id"], version=package["version"])
            self._rebuild_gates()

    def reported(self, device_id: str, package: Mapping[str, Any], state: str,
                 reason: str | None = None) -> None:
        """A device's report about ``package`` (its current version) moves its rollout."""
        done = ("applied",) if kind_of(package) == "firmware" else ("verified", "applied")
        if state in done:
            outcome = "succeeded"
        elif state == "failed":
            outcome = "failed"
        else:
            return
        with self.lock:
            rollout = self._open_for(package)
            if rollout is None:
                return
            entry = rollout["devices"].get(device_id)
            if entry is None or entry["state"] == outcome or \
                    rollout["waves"][entry["wave"]]["state"] == "waiting":
                return
            entry.update(state=outcome, at=self.clock(),
                         **({"reason": reason or "reported failed"}
                            if outcome == "failed" else {}))
            if outcome == "succeeded":
                entry.pop("reason", None)
            self._advance(rollout)
            self._save(rollout)

    def _open_for(self, package: Mapping[str, Any]) -> Document | None:
        for rollout in self.table.all():
            if rollout["package_id"] == package["id"] and \
                    rollout["package_version"] == package["version"] and \
                    rollout["state"] in ("running", "paused", "aborted"):
                return rollout
        return None

    def tick(self) -> None:
        """Deadlines, thresholds, soak times and start times: run every few seconds."""
        with self.lock:
            for rollout in self.table.all():
                if rollout["state"] in ("scheduled", "running"):
                    before = _fingerprint(rollout)
                    self._advance(rollout)
                    if _fingerprint(rollout) != before:
                        self._save(rollout)

    # -- operator actions ----------------------------------------------------------------
    def create(self, spec: Mapping[str, Any], actor: str | None = None) -> Document:
        """Start (or schedule) a rollout of ``spec["package"]`` as ``spec`` describes
        (already shaped by the schema: target, canary, percents, thresholds, times)."""
        spec = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
        percents = list(spec["percents"])
        if any(b <= a for a, b in zip(percents, percents[1:], strict=False)) \
                or percents[-1] != 100 or percents[0] <= 0:
            raise ValidationFailed("percents must rise and end at 100", code="bad_waves")
        catalog = self.catalog()
        package = catalog.get(spec["package"])
        target = dict(spec.get("target") or {"kind": "all"})
        with self.lock:
            now = self.clock()
            existing = [r for r in self.table.all() if r["package_id"] == package["id"]
                        and r["package_version"] == package["version"]
                        and r["state"] in OPEN_STATES]
            draft = next((r for r in existing if r["state"] == "draft"), None)
            if any(r["state"] != "draft" for r in existing):
                raise Conflict(f"package {package['id']} version {package['version']} "
                               "already has a rollout under way", code="rollout_exists")
            reached = [d for d in self.stores.devices.all()
                       if package["id"] in {p["id"] for p in catalog.files_for(d).values()}
                       and matches_target(target, d, self.stores.liveness.get(d["id"])
                                          .get("firmware_version"))]
            if not reached:
                raise ValidationFailed("the target reaches no device that the package is "
                                       "staged for", code="no_devices")
            order = wave_order([d["id"] for d in reached], package["sha256"])
            waves, devices, start = [], {}, 0
            for index, (name, size) in enumerate(wave_sizes(len(order), spec["canary"],
                                                            percents)):
                members = order[start:start + size]
                start += size
                waves.append({"name": name, "devices": members, "state": "waiting",
                              "started_at": None, "met_at": None, "ended_at": None})
                devices.update({d: {"wave": index, "state": "pending"} for d in members})
            start_at = spec.get("start_at")
            rollout = {
                **self._base(package, now), "target": target, "canary": spec["canary"],
                "percents": percents, "success_threshold": spec["success_threshold"],
                "error_threshold": spec["error_threshold"], "soak_s": spec["soak_s"],
                "deadline_s": spec["deadline_s"], "start_at": start_at,
                "window": spec.get("window"), "waves": waves, "devices": devices,
                "state": "scheduled", "reason": None, "created_by": actor,
            }
            if draft is not None:
                rollout["id"] = draft["id"]
                self.table.update(draft["id"], rollout)
            else:
                self.table.insert(rollout)
            record_event(self.stores, "rollout.created", None, actor, rollout_id=rollout["id"],
                         package_id=package["id"], devices=len(order), waves=len(waves))
            if start_at is None or start_at <= now:
                self._advance(rollout)
            self._save(rollout)
            return self.get(rollout["id"])

    def pause(self, rollout_id: str, actor: str | None = None) -> Document:
        return self._act(rollout_id, ("scheduled", "running"), "paused", actor,
                         "paused by an operator")

    def resume(self, rollout_id: str, actor: str | None = None) -> Document:
        def reopen(rollout: Document) -> None:
            for wave in rollout["waves"]:
                if wave["state"] == "failed":
                    wave["state"], wave["ended_at"] = "running", None
        return self._act(rollout_id, ("paused",), "running", actor, None, reopen)

    def abort(self, rollout_id: str, actor: str | None = None) -> Document:
        return self._act(rollout_id, OPEN_STATES, "aborted", actor, "aborted by an operator")

    def retry_failed(self, rollout_id: str, actor: str | None = None) -> Document:
        """Failed devices of started waves count as pending again, their deadline anew."""
        def retry(rollout: Document) -> None:
            now = self.clock()
            for entry in rollout["devices"].values():
                if entry["state"] == "failed":
                    entry.update(state="pending", since=now)
                    entry.pop("reason", None)
        return self._act(rollout_id, ("running", "paused"), None, actor, None, retry)

    def _act(self, rollout_id: str, allowed: tuple[str, ...], state: str | None,
             actor: str | None, reason: str | None,
             change: Callable[[Document], None] | None = None) -> Document:
        with self.lock:
            rollout = self.table.get(rollout_id)
            if rollout["state"] not in allowed:
                raise Conflict(f"rollout {rollout_id} is {rollout['state']}; this needs it "
                               f"{' or '.join(allowed)}", code="wrong_state")
            if change is not None:
                change(rollout)
            if state is not None:
                self._set_state(rollout, state, actor, reason)
            else:
                record_event(self.stores, "rollout.retried", None, actor,
                             rollout_id=rollout_id)
            self._advance(rollout)
            self._save(rollout)
            return self.get(rollout_id)

    # -- reads ---------------------------------------------------------------------------
    def get(self, rollout_id: str) -> Document:
        try:
            return summarise(self.table.get(rollout_id))
        except NotFound:
            raise NotFound(f"rollout {rollout_id!r} not found", code="no_such_rollout") \
                from None

    def list(self, state: str | None = None) -> list[Document]:
        found = [summarise(r) for r in self.table.all() if state in (None, r["state"])]
        return sorted(found, key=lambda r: r["created"], reverse=True)

    def count_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for rollout in self.table.all():
            counts[rollout["state"]] += 1
        return counts

    # -- how waves move ------------------------------------------------------------------
    def _advance(self, rollout: Document) -> None:
        """Move ``rollout`` as far as the clock and its devices allow (in memory)."""
        now = self.clock()
        if rollout["state"] == "scheduled" and (rollout.get("start_at") or 0) <= now:
            self._set_state(rollout, "running", None, None)
        if rollout["state"] != "running":
            return
        for entry in rollout["devices"].values():
            if entry["state"] == "pending" and "since" in entry and \
                    now - entry["since"] > rollout["deadline_s"]:
                entry.update(state="failed", at=now, reason="no success before the deadline")
        while rollout["state"] == "running":
            current = next((w for w in rollout["waves"] if w["state"] == "running"), None)
            if current is None:
                waiting = next((w for w in rollout["waves"] if w["state"] == "waiting"), None)
                if waiting is None:
                    self._set_state(rollout, "finished", None, None)
                    return
                if not in_window(rollout.get("window"), now):
                    return  # the next wave starts when the daily window opens
                self._start_wave(rollout, waiting, now)
                continue
            counts = wave_counts(rollout, current)
            if counts["failed"] > rollout["error_threshold"] * counts["size"]:
                self._pause_on(rollout, current, now, f"{counts['failed']} of {counts['size']} "
                               "devices failed, over the error threshold of "
                               f"{rollout['error_threshold']:.0%}")
                return
            if counts["succeeded"] >= rollout["success_threshold"] * counts["size"]:
                current["met_at"] = current["met_at"] or now
                if now - current["met_at"] < rollout["soak_s"]:
                    return
                current["state"], current["ended_at"] = "succeeded", now
                continue
            if counts["pending"] == 0:
                self._pause_on(rollout, current, now, f"{counts['succeeded']} of "
                               f"{counts['size']} devices succeeded, under the success "
                               f"threshold of {rollout['success_threshold']:.0%}")
            return

    def _pause_on(self, rollout: Document, wave: Document, now: float, why: str) -> None:
        """A wave failed its thresholds: it fails and the rollout pauses by itself."""
        wave["state"], wave["ended_at"] = "failed", now
        self._set_state(rollout, "paused", None, f"wave {wave['name']}: {why}")

    def _start_wave(self, rollout: Document, wave: Document, now: float) -> None:
        wave["state"], wave["started_at"] = "running", now
        for device_id in wave["devices"]:
            rollout["devices"][device_id]["since"] = now
        record_event(self.stores, "rollout.wave_started", None, None,
                     rollout_id=rollout["id"], wave=wave["name"], devices=len(wave["devices"]))

    def _set_state(self, rollout: Document, state: str, actor: str | None,
                   reason: str | None) -> None:
        rollout["state"], rollout["reason"] = state, reason
        record_event(self.stores, f"rollout.{state}", None, actor, rollout_id=rollout["id"],
                     package_id=rollout["package_id"], reason=reason)
        log.info("rollout %s: %s%s", rollout["id"], state, f" ({reason})" if reason else "")

    def _save(self, rollout: Document) -> None:
        rollout["updated"] = now_iso()
        self.table.update(rollout["id"], rollout)
        self._rebuild_gates()

    def _base(self, package: Mapping[str, Any], now: float) -> Document:
        return {"id": secrets.token_hex(4), "package_id": package["id"],
                "package_version": package["version"], "path": package["path"],
                "package_target": package["target"], "sha256": package["sha256"],
                "md5": package["md5"], "kind": kind_of(package), "created": now_iso(),
                "target": {"kind": "all"}, "waves": [], "devices": {}, "start_at": None}


def _fingerprint(rollout: Mapping[str, Any]) -> tuple:
    return (rollout["state"], tuple((w["state"], w["met_at"]) for w in rollout["waves"]),
            tuple(e["state"] for e in rollout["devices"].values()))


def summarise(rollout: Document) -> Document:
    """A rollout as the API and the dashboard show it: each wave with its counts."""
    waves = []
    for index, wave in enumerate(rollout["waves"]):
        waves.append({"index": index, "name": wave["name"], "state": wave["state"],
                      "started_at": wave["started_at"], "ended_at": wave["ended_at"],
                      "devices": list(wave["devices"]), **wave_counts(rollout, wave)})
    totals = {s: sum(1 for e in rollout["devices"].values() if e["state"] == s)
              for s in ("pending", "succeeded", "failed")}
    return {**rollout, "waves": waves, "totals": {"devices": len(rollout["devices"]),
                                                  **totals}}


def target_label(target: Mapping[str, Any]) -> str:
    if target["kind"] == "all":
        return "all"
    if target["kind"] == "device":
        return target["device"]
    if target["kind"] == "group":
        return GROUP_PREFIX + target["group"]
    return ",".join(f"{k}={v}" for k, v in sorted((target.get("filter") or {}).items()))
