"""Every read and write of the hub's data goes through here; nothing else imports tinydb.

Layout of a data directory::

    hub.lock            exclusive claim of the running hub (pid, URL, local CLI token)
    devices.json        TinyDB: devices and group settings (hot, small state)
    commands.json       TinyDB: commands with deliveries still open; finished ones leave
    auth.json           TinyDB: admin tokens, enrollment keys, operators
    meta.json           TinyDB: hub-wide facts (e.g. which seed files were imported)
    liveness.json       last seen, signal, heap: checkpointed, not fsynced per heartbeat
    health.json         24 h of RSSI and free heap per device, downsampled, checkpointed
    history/<stream>/   append-only segmented JSON lines (messages, commands, events, sync)
    packages.json       TinyDB: sync packages (one per staged file)
    manifests.json      (before 2026-12) TinyDB: manifest versions; read once, to carry on
    manifest_versions.json  each device's manifest version and digest, checkpointed
    uploads.json        TinyDB: files devices uploaded (name, size, SHA-256)
    rollouts.json       TinyDB: rollouts, their waves and each device's outcome
    sync_state.json     latest sync report per device and package, checkpointed
    enrollments.json    TinyDB: boards enrolling without a token (pending, accepted, ...)
                        and the MACs preauthorised to join
    sites.json          TinyDB: many sites (a site: the central commands it took, by id;
                        the centre: each site's last export and the commands it sent)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .datadir import DataDirLock, current_holder
from .files import HubFiles, remove_stale_temp_files, write_atomically
from .health import HealthSeries
from .history import HistoryLog
from .liveness import LivenessTable
from .syncstate import SyncStateTable
from .tables import Document, KeyedTable, TableFile

__all__ = ["Document", "HistoryLog", "KeyedTable", "Stores", "current_holder",
           "write_atomically"]

log = logging.getLogger(__name__)



def message_keys(record: dict) -> list[str]:
    device, level = record.get("device_id"), record.get("level")
    return [f"device:{device}", f"device:{device}/level:{level}", f"level:{level}"]


def device_keys(record: dict) -> list[str]:
    return [f"device:{record.get('device_id')}"]


def command_keys(record: dict) -> list[str]:
    return [f"device:{record.get('device_id')}", f"command:{record.get('command_id')}"]


#: History streams the hub keeps, each its own folder of segments, with what to index.
HISTORY_STREAMS = {"messages": message_keys, "commands": command_keys, "events": None,
                   "sync": device_keys}
#: Below this much free space the store reports "low_disk": writes will soon answer 507.
LOW_DISK_BYTES = 50 * 1024 * 1024


class Stores:
    """The open stores of one data directory, held exclusively by this process."""

    def __init__(self, data_dir: Path | str, *, history_segment_records: int = 10_000,
                 history_retention: int = 100_000, liveness_checkpoint_s: float = 5.0,
                 health_bucket_s: int = 300):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock = DataDirLock(self.data_dir)
        self.lock.acquire()
        try:
            for leftover in remove_stale_temp_files(self.data_dir):
                log.info("removed unacknowledged temp file %s", leftover)
            #: Files of this directory the hub replaced while linked elsewhere: the
            #: staging folder refuses them (``files.HubFiles``).
            self.hub_files = HubFiles(self.data_dir).open()
            self._files: list[TableFile] = []
            device_file = self._open("devices.json")
            auth_file = self._open("auth.json")
            meta_file = self._open("meta.json")
            self.devices = KeyedTable(device_file, "devices", "id", unique=["token_hash"],
                                      item="device")
            self.admin_tokens = KeyedTable(auth_file, "admin_tokens", "id",
                                           unique=["token_hash"], item="admin token")
            #: Enrollment keys (their hash): the credential of a board that has no token.
            self.enroll_keys = KeyedTable(auth_file, "enroll_keys", "id",
                                          unique=["token_hash"], item="enrollment key")
            self.operators = KeyedTable(auth_file, "operators", "username", item="operator")
            #: Dashboard sessions by the hash of their id: a logout or a password change
            #: deletes them, so an old cookie stops working.
            self.sessions = KeyedTable(auth_file, "sessions", "id", item="session")
            self.meta = KeyedTable(meta_file, "meta", "name", item="hub fact")
            self.groups = KeyedTable(device_file, "groups", "name", item="group")
            self.commands = KeyedTable(self._open("commands.json"), "commands", "id",
                                       item="command")
            self.history = {
                stream: HistoryLog(self.data_dir / "history" / stream,
                                   segment_records=history_segment_records,
                                   max_records=history_retention, index_keys=keys)
                for stream, keys in HISTORY_STREAMS.items()
            }
            self.liveness = LivenessTable(self.data_dir / "liveness.json",
                                          liveness_checkpoint_s)
            self.health = HealthSeries(self.data_dir / "health.json", health_bucket_s,
                                       liveness_checkpoint_s)
            self._open_file_sync_stores(liveness_checkpoint_s)
            enrollment_file = self._open("enrollments.json")
            #: Boards that asked to join, by hardware id (MAC): pending, accepted, rejected
            #: or claimed (the token handed out, once).
            self.enrollments = KeyedTable(enrollment_file, "enrollments", "hardware_id",
                                          item="enrollment")
            #: MACs an operator accepted before the boards arrived (with groups, a name).
            self.preauthorized = KeyedTable(enrollment_file, "preauthorized", "hardware_id",
                                            item="preauthorised board")
            sites_file = self._open("sites.json")
            #: On a site: every command file from the centre taken in, by its id, so a
            #: file delivered again (a link back, a rescan) is never queued twice.
            self.central_commands = KeyedTable(sites_file, "central_commands", "id",
                                               item="central command")
            #: On the centre: each site's newest export and how far it has been read.
            self.sites = KeyedTable(sites_file, "sites", "name", item="site")
            #: On the centre: commands sent to sites, with the results their exports bring.
            self.site_commands = KeyedTable(sites_file, "site_commands", "id",
                                            item="site command")
        except BaseException:
            if hasattr(self, "hub_files"):
                self.hub_files.close()
            self.lock.release()
            raise
        self._closed = False

    def _open(self, name: str) -> TableFile:
        table_file = TableFile(self.data_dir / name)
        self._files.append(table_file)
        return table_file

    def state(self) -> dict:
        """What /health reports about the stores: "ok", or "low_disk" before writes fail."""
        free = shutil.disk_usage(self.data_dir).free
        return {
            "state": "ok" if free >= LOW_DISK_BYTES else "low_disk",
            "data_dir": str(self.data_dir),
            "disk_free_bytes": free,
            "devices": len(self.devices),
            "history": {name: len(log) for name, log in self.history.items()},
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Checkpoint liveness, close every file and give up the data directory."""
        if self._closed:
            return
        self._closed = True
        try:
            self.liveness.stop()
            self.health.stop()
            self.sync_state.stop()
            self.manifest_versions.stop()
            for history in self.history.values():
                history.close()
            for table_file in self._files:
                table_file.close()
        finally:
            self.hub_files.close()
            self.lock.release()

    # -- file sync ---------------------------------------------------------------------
    def _open_file_sync_stores(self, checkpoint_s: float) -> None:
        """Packages, manifests and device uploads: hot and small, so TinyDB. Sync reports
        grow, so they go to the ``sync`` history, with the latest per pair checkpointed."""
        self.packages = KeyedTable(self._open("packages.json"), "packages", "id",
                                   unique=["slot"], item="package")
        self.manifests = KeyedTable(self._open("manifests.json"), "manifests", "device_id",
                                    item="manifest")
        #: Each device's manifest version and the digest it was given for: memory,
        #: checkpointed. Versions come from blocks reserved in ``meta`` (see sync/packages.py),
        #: so one lost with a crash is never given again.
        self.manifest_versions = LivenessTable(self.data_dir / "manifest_versions.json",
                                               checkpoint_s)
        self.uploads = KeyedTable(self._open("uploads.json"), "uploads", "id", item="upload")
        #: Rollouts with their waves (membership chosen once) and each device's outcome.
        self.rollouts = KeyedTable(self._open("rollouts.json"), "rollouts", "id",
                                   item="rollout")
        self.sync_state = SyncStateTable(self.data_dir / "sync_state.json",
                                         self.history["sync"], checkpoint_s)

    def start_checkpoints(self) -> None:
        """Checkpoint in-memory state (liveness, sync state) in the background."""
        self.liveness.start()
        self.health.start()
        self.sync_state.start()
        self.manifest_versions.start()
