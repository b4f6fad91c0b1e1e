"""Sync packages: one per staged file, the manifests built from them, and sync state.

A package is what the staging folder says a set of devices should hold at one path: its
target (a device id, ``group-<name>`` or ``all``), its path below the target folder, and
the blob its current content is. Every new content gets a new ``version`` from one
hub-wide counter, so a (package, version) pair is never reused, not even after a withdraw
and a re-stage: a device asking for chunks of a version that has since been replaced gets
409 and can never mix chunks of two versions.

Manifests are built from an in-memory snapshot of the catalog, replaced whole on every
change, so a poll reads no file and writes nothing unless the device's manifest really
changed. Each device's manifest has its own version, which rises exactly when the list of
files it should hold changes (a file added, replaced or withdrawn, or the device joining
or leaving a group). Versions are taken from one hub-wide counter reserved on disk a block
at a time, and each device's (version, digest) is kept in memory and checkpointed: a file
dropped for 10,000 devices changes 10,000 manifests, and storing each version before
giving it out rewrote a file per device. A crash may forget a device's latest version;
it then gets a new, higher one for the same content (one more manifest download), never
an old number for new content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..clock import now_iso
from ..errors import Conflict, Forbidden, NotFound, ValidationFailed
from ..fleet.devices import record_event
from ..store import Document, Stores
from .blobs import BlobInfo, BlobStore
from .tickets import Tickets

log = logging.getLogger(__name__)

ALL_TARGET = "all"
GROUP_PREFIX = "group-"
#: Where packages come from.
#: Where a package's content came from: the staging folder, a central office's feed
#: (``staging/@central/``), or an upload through the admin API or the dashboard.
UPLOAD_SOURCES = ("api", "dashboard")
SOURCES = ("folder", "central", *UPLOAD_SOURCES)
#: What a device reports about a package, in the order a download goes through them.
SYNC_STATES = ("downloading", "verified", "applied", "failed")
#: States in which a device holds the package's content, checked.
HOLDING_STATES = ("verified", "applied")
#: The counts of a package's progress the admin API and the dashboard show.
PROGRESS_FIELDS = ("targets", "have", "downloading", "failed")
VERSION_COUNTER = "package_version"
#: Manifest versions are reserved on disk this many at a time (``meta``).
MANIFEST_VERSION_BLOCK = 1000
MANIFEST_VERSION_FACT = "next_manifest_version"
#: The route a manifest points devices to; ``/<index>`` appended fetches one chunk.
DOWNLOAD_PATH = "/api/v1/files/download/{device_id}/{package_id}/{version}"


def package_id_for(target: str, path: str) -> str:
    """A package's id: stable for its staging slot, so history and status follow a file
    across versions, and short enough for an ESP8266 to keep a few in RAM."""
    return hashlib.sha256(f"{target}/{path}".encode()).hexdigest()[:12]


def targets_of(device: Mapping[str, Any]) -> list[str]:
    """The staging targets that reach ``device``, least specific first.

    Between two groups the one whose name sorts first wins, so groups come in reverse
    order: the later entry overrides the earlier one for the same path.
    """
    groups = sorted(device.get("groups") or [], reverse=True)
    return [ALL_TARGET, *(GROUP_PREFIX + g for g in groups), device["id"]]


@dataclass(frozen=True)
class Catalog:
    """An immutable view of every package; replaced whole on each change."""

    generation: int = 0
    by_id: Mapping[str, Document] = field(default_factory=dict)
    by_target: Mapping[str, Mapping[str, Document]] = field(default_factory=dict)
    by_slot: Mapping[str, Document] = field(default_factory=dict)

    @classmethod
    def of(cls, packages: Iterable[Document], generation: int) -> Catalog:
        by_id: dict[str, Document] = {}
        by_target: dict[str, dict[str, Document]] = {}
        for package in packages:
            by_id[package["id"]] = package
            by_target.setdefault(package["target"], {})[package["path"]] = package
        return cls(generation, by_id, by_target,
                   {p["slot"]: p for p in by_id.values()})

    def files_for(self, device: Mapping[str, Any]) -> dict[str, Document]:
        """Path to package for everything ``device`` should hold; the most specific
        target wins for the same path (the device's own folder, then a group, then all)."""
        chosen: dict[str, Document] = {}
        for target in targets_of(device):
            chosen.update(self.by_target.get(target, {}))
        return chosen

    def get(self, package_id: str) -> Document:
        try:
            return self.by_id[package_id]
        except KeyError:
            raise NotFound(f"package {package_id!r} not found", code="no_such_package") \
                from None


@dataclass(frozen=True)
class Manifest:
    """What one device should hold, as served at ``GET /api/v1/files/manifest/{id}``."""

    device_id: str
    version: int
    etag: str
    files: tuple[Document, ...]
    package_ids: frozenset[str] = frozenset()

    def document(self) -> dict[str, Any]:
        return {"device": self.device_id, "version": self.version, "files": list(self.files)}

    def lists(self, package_id: str) -> bool:
        return package_id in self.package_ids


def manifest_entry(package: Document, device_id: str, tickets: Tickets | None = None,
                   expires: int = 0) -> Document:
    """One file of a manifest: only what a device needs, to keep it small. With
    ``tickets`` its url carries a download ticket good until ``expires``."""
    url = tickets.url(device_id, package["id"], package["version"], expires) if tickets \
        else DOWNLOAD_PATH.format(device_id=device_id, package_id=package["id"],
                                  version=package["version"])
    return {
        "id": package["id"], "path": package["path"], "size": package["size"],
        "sha256": package["sha256"], "md5": package["md5"],
        "chunk_size": package["chunk_size"], "chunks": package["chunk_count"],
        "version": package["version"], "url": url,
    }


def content_digest(files: Iterable[Document]) -> str:
    canonical = json.dumps([[f["id"], f["version"], f["path"], f["sha256"], f["chunk_size"]]
                            for f in files], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Gate(Protocol):
    """Who may be offered which package now (``rollouts.Rollouts``)."""

    #: Rises whenever the answer of ``may_see`` may have changed for someone.
    generation: int

    def may_see(self, device_id: str, package: Mapping[str, Any]) -> bool: ...

    def publishing(self, package: Mapping[str, Any], release: str | None = None) -> None: ...

    def reported(self, device_id: str, package: Mapping[str, Any], state: str,
                 reason: str | None = None) -> None: ...


class OpenGate:
    """No rollouts: every device is offered everything staged for it."""

    generation = 0

    def may_see(self, device_id: str, package: Mapping[str, Any]) -> bool:
        return True

    def publishing(self, package: Mapping[str, Any], release: str | None = None) -> None:
        pass

    def reported(self, device_id: str, package: Mapping[str, Any], state: str,
                 reason: str | None = None) -> None:
        pass


class PackageCatalog:
    """Every package, their manifests and the devices' sync state."""

    def __init__(self, stores: Stores, blobs: BlobStore):
        self.stores = stores
        self.blobs = blobs
        #: Held while the set of packages or blobs changes (ingest, withdraw, clean-up);
        #: readers never take it, they read the current ``Catalog``.
        self.write_lock = threading.RLock()
        self._manifest_lock = threading.Lock()
        self._versions = stores.manifest_versions
        self._next_manifest = self._manifests_reserved_until = self._first_manifest_version()
        self._manifests: dict[str, tuple[tuple, Manifest]] = {}
        self._listed: dict[str, tuple[tuple, frozenset[str]]] = {}
        self.catalog = Catalog.of(stores.packages.all(), generation=0)
        #: Download tickets in manifest urls (DOWNLOAD_TICKET_SECRET), or None.
        self.tickets: Tickets | None = None
        #: Rollouts: which of its packages a device may be offered now.
        self.gate: Gate = OpenGate()

    # -- changes -----------------------------------------------------------------------
    @contextmanager
    def changing(self) -> Iterator[None]:
        """Hold off other changes (and blob clean-up) while adding a blob and publishing it."""
        with self.write_lock:
            yield

    def publish(self, target: str, path: str, blob: BlobInfo, *, source: str,
                staged: Mapping[str, int] | None = None,
                release: str | None = None) -> tuple[Document, bool]:
        """Make ``blob`` the content of the package at ``target/path``.

        Returns the package and whether its content changed. Content equal to the current
        version's only refreshes what is known of the staged file: no new version.
        ``release`` (publish or draft) overrides what ``STAGING_RELEASE`` says for its kind.
        """
        if source not in SOURCES:
            raise ValidationFailed(f"source must be one of {', '.join(SOURCES)}")
        slot = f"{target}/{path}"
        with self.write_lock:
            current = self.catalog.by_slot.get(slot)
            if current is not None and current["sha256"] == blob.sha256 \
                    and current["chunk_size"] == blob.chunk_size:
                if staged is not None and current.get("staged") != dict(staged):
                    current = self.stores.packages.update(current["id"],
                                                          {"staged": dict(staged)})
                    self._refresh()
                return current, False
            now = now_iso()
            package = {
                "id": package_id_for(target, path), "slot": slot, "target": target,
                "path": path, "size": blob.size, "sha256": blob.sha256, "md5": blob.md5,
                "chunk_size": blob.chunk_size, "chunk_count": blob.chunk_count,
                "version": self._next_version(), "created": now, "source": source,
                "staged": dict(staged) if staged is not None else None,
            }
            if current is None:
                stored = self.stores.packages.insert(package)
            else:
                stored = self.stores.packages.update(current["id"], package)
            # Stored, not yet offered: whoever sees the new version can find its event,
            # and a rollout draft holds it back before anyone could see it.
            record_event(self.stores, "package.published", None, source,
                         package_id=stored["id"], target=target, path=path,
                         version=stored["version"], size=blob.size)
            self.gate.publishing(stored, release)
            self._refresh()
            if current is not None:
                self.drop_blob_if_unused(current["sha256"])
            log.info("package %s: %s version %d (%d bytes, sha256 %s, from %s)",
                     stored["id"], slot, stored["version"], blob.size, blob.sha256[:12], source)
            return stored, True

    def withdraw(self, package_id: str) -> Document:
        """Remove a package: no manifest lists it any more and its blob goes if unused."""
        with self.write_lock:
            package = self.stores.packages.delete(package_id)
            self._refresh()
            self.drop_blob_if_unused(package["sha256"])
            self.stores.sync_state.forget_package(package_id)
        log.info("package %s: %s withdrawn", package_id, package["slot"])
        record_event(self.stores, "package.withdrawn", None, None, package_id=package_id,
                     target=package["target"], path=package["path"])
        return package

    def remove_unreferenced_blobs(self) -> list[str]:
        with self.write_lock:
            return self.blobs.remove_unreferenced(p["sha256"]
                                                  for p in self.catalog.by_id.values())

    def drop_blob_if_unused(self, sha256: str) -> None:
        with self.write_lock:
            if all(p["sha256"] != sha256 for p in self.catalog.by_id.values()):
                self.blobs.remove(sha256)

    def _refresh(self) -> None:
        self.catalog = Catalog.of(self.stores.packages.all(), self.catalog.generation + 1)

    def _next_version(self) -> int:
        """The next value of the hub-wide version counter, stored before it is used."""
        meta = self.stores.meta
        highest = max((p["version"] for p in self.catalog.by_id.values()), default=0)
        stored = meta.get(VERSION_COUNTER)["value"] if VERSION_COUNTER in meta else 0
        version = max(stored, highest) + 1
        meta.upsert({"name": VERSION_COUNTER, "value": version})
        return version

    # -- reads -------------------------------------------------------------------------
    def get(self, package_id: str) -> Document:
        return dict(self.catalog.get(package_id))

    def list_packages(self, target: str | None = None) -> list[Document]:
        packages = self.catalog.by_id.values()
        return sorted((dict(p) for p in packages if target is None or p["target"] == target),
                      key=lambda p: (p["target"], p["path"]))

    def offered(self, device: Mapping[str, Any],
                catalog: Catalog | None = None) -> dict[str, Document]:
        """Path to package for what ``device`` is offered now: what is staged for it
        (``Catalog.files_for``) less what a rollout holds back from it."""
        gate = self.gate
        return {path: package
                for path, package in (catalog or self.catalog).files_for(device).items()
                if gate.may_see(device["id"], package)}

    def blob_info(self, package: Mapping[str, Any]) -> BlobInfo:
        return self.blobs.info(package["sha256"], package["chunk_size"])

    def build_manifest(self, device: Mapping[str, Any]) -> Manifest:
        """The manifest of ``device``, from memory.

        With tickets, the urls (and the ETag, not the version) change once per ticket
        window: a device that asks with the old ETag gets the list again, fresh tickets
        in it."""
        groups = tuple(sorted(device.get("groups") or []))
        tickets = self.tickets
        expires = tickets.expiry() if tickets else 0
        cached = self._manifests.get(device["id"])
        if cached is not None and cached[0] == (self.catalog.generation,
                                                self.gate.generation, groups, expires):
            return cached[1]
        # A miss builds under the lock from the catalog as it is then, so two requests
        # racing a catalog change cannot give an older list a newer version.
        with self._manifest_lock:
            catalog = self.catalog
            key = (catalog.generation, self.gate.generation, groups, expires)
            cached = self._manifests.get(device["id"])
            if cached is not None and cached[0] == key:
                return cached[1]
            files = [manifest_entry(p, device["id"], tickets, expires)
                     for _, p in sorted(self.offered(device, catalog).items())]
            digest = content_digest(files)
            version = self._manifest_version(device["id"], digest)
            etag = f"{version}-{digest[:16]}" + (f"-t{expires}" if tickets else "")
            manifest = Manifest(device["id"], version, etag,
                                tuple(files), frozenset(f["id"] for f in files))
            self._manifests[device["id"]] = (key, manifest)
        return manifest

    def _manifest_version(self, device_id: str, digest: str) -> int:
        """The version for this content: the one given last if the content is the same,
        else a new one. Called under ``_manifest_lock``."""
        known = self._versions.get(device_id)
        if known.get("digest") == digest:
            return known["version"]
        if self._next_manifest >= self._manifests_reserved_until:
            until = self._next_manifest + MANIFEST_VERSION_BLOCK
            self.stores.meta.upsert({"name": MANIFEST_VERSION_FACT, "value": until})
            self._manifests_reserved_until = until
        version = self._next_manifest
        self._next_manifest += 1
        self._versions.update(device_id, version=version, digest=digest,
                              changed_at=now_iso())
        return version

    def _first_manifest_version(self) -> int:
        """Where this run's manifest versions start: past every one a run before may have
        given (its whole reserved block). A data directory from before the versions were
        checkpointed has them in ``manifests.json``: they carry on from there."""
        try:
            return self.stores.meta.get(MANIFEST_VERSION_FACT)["value"]
        except NotFound:
            pass
        older = self.stores.manifests.all()
        for record in older:
            self._versions.update(record["device_id"], version=record["version"],
                                  digest=record["digest"], changed_at=record["changed_at"])
        return max((record["version"] for record in older), default=0) + 1

    def authorize_download(self, device: Mapping[str, Any], package_id: str,
                           version: int) -> Document:
        """The package a device may download: it must be in its manifest (403) and the
        version asked for must still be the current one (409 once replaced)."""
        catalog = self.catalog
        package = catalog.get(package_id)
        if package_id not in self._listed_ids(catalog, device):
            raise Forbidden(f"package {package_id} is not in the manifest of {device['id']}",
                            code="not_in_manifest")
        if version != package["version"]:
            if version < package["version"]:
                raise Conflict(f"version {version} of package {package_id} has been "
                               f"replaced by version {package['version']}; fetch the "
                               "manifest again", {"current_version": package["version"]},
                               code="version_replaced")
            raise NotFound(f"package {package_id} has no version {version}",
                           code="no_such_version")
        return package

    def _listed_ids(self, catalog: Catalog, device: Mapping[str, Any]) -> frozenset[str]:
        """The ids in ``device``'s manifest, without building one: building stores the
        manifest's version (an fsynced write), which a download must not wait for."""
        key = (catalog.generation, self.gate.generation,
               tuple(sorted(device.get("groups") or [])))
        built = self._manifests.get(device["id"])
        if built is not None and built[0][:3] == key:
            return built[1].package_ids
        listed = self._listed.get(device["id"])
        if listed is not None and listed[0] == key:
            return listed[1]
        ids = frozenset(package["id"] for package in self.offered(device, catalog).values())
        self._listed[device["id"]] = (key, ids)
        return ids

    # -- sync state --------------------------------------------------------------------
    def record_sync_report(self, device: Mapping[str, Any], report: Mapping[str, Any]) \
            -> Document:
        """Keep what a device says about one of its packages, in the sync history."""
        package = self.catalog.get(report["package"])
        if not self.build_manifest(device).lists(package["id"]):
            raise Forbidden(f"package {package['id']} is not in the manifest of "
                            f"{device['id']}", code="not_in_manifest")
        if report["version"] > package["version"]:
            raise NotFound(f"package {package['id']} has no version {report['version']}",
                           code="no_such_version")
        entry: dict[str, Any] = {
            "at": now_iso(), "device_id": device["id"], "package_id": package["id"],
            "path": package["path"], "version": report["version"], "state": report["state"],
        }
        if report.get("received") is not None:
            entry["received"] = min(report["received"], package["size"])
        if report.get("reason"):
            entry["reason"] = report["reason"]
        recorded = self.stores.sync_state.record(entry)
        if report["version"] == package["version"]:
            self.gate.reported(device["id"], package, report["state"], report.get("reason"))
        return recorded

    def reports_by_package(self) -> dict[str, dict[str, Document]]:
        """Each package's latest sync report per device."""
        return self.stores.sync_state.by_package()

    def with_progress(self, devices: Iterable[Mapping[str, Any]],
                      packages: list[Document]) -> list[dict[str, Any]]:
        """Packages with how far their target devices are (one pass over the sync state):
        what the admin API and the dashboard show of a package."""
        status = self.status(devices, [p["id"] for p in packages])
        return [{**p, "progress": {k: status[p["id"]][k] for k in PROGRESS_FIELDS},
                 "devices": status[p["id"]]["devices"]} for p in packages]

    def sync_history(self, device_id: str, limit: int) -> list[Document]:
        """A device's sync reports, newest first (from the history's per-device index)."""
        return self.stores.history["sync"].find(f"device:{device_id}", limit=limit)

    def status(self, devices: Iterable[Mapping[str, Any]],
               package_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per package: each target device's latest report and the count holding it.

        A device is a target when the package is in its manifest (so a device whose own
        folder has a file at the same path is not counted for the group's file).
        """
        catalog = self.catalog
        wanted = set(catalog.by_id if package_ids is None else package_ids)
        reports = self.stores.sync_state.by_package()
        status: dict[str, dict[str, Any]] = {
            pid: {"devices": [], "targets": 0, "have": 0, "downloading": 0, "failed": 0}
            for pid in wanted}
        for device in devices:
            for package in self.offered(device, catalog).values():
                if package["id"] not in wanted:
                    continue
                entry = device_status(package, reports.get(package["id"], {})
                                      .get(device["id"]))
                counts = status[package["id"]]
                counts["devices"].append({"device_id": device["id"], **entry})
                counts["targets"] += 1
                if entry["state"] in HOLDING_STATES:
                    counts["have"] += 1
                elif entry["state"] in ("downloading", "failed"):
                    counts[entry["state"]] += 1
        return status


def device_status(package: Mapping[str, Any], report: Mapping[str, Any] | None) \
        -> dict[str, Any]:
    """Where one device stands with the current version of ``package``.

    A report about an older version says nothing about the current one: "outdated".
    """
    if report is None:
        return {"state": "pending", "version": None, "percent": 0}
    state = report["state"] if report["version"] == package["version"] else "outdated"
    received = report.get("received")
    if report["state"] in HOLDING_STATES:
        percent = 100 if state != "outdated" else 0
    elif received is not None and package["size"]:
        percent = round(100 * received / package["size"])
    else:
        percent = 0
    status = {"state": state, "version": report["version"], "percent": percent,
              "updated_at": report["at"]}
    for extra in ("received", "reason"):
        if extra in report:
            status[extra] = report[extra]
    return status
