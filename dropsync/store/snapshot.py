"""A consistent, point-in-time copy of a live data directory, for backups.

The hub keeps writing while a backup streams out, so the backup is taken from a snapshot,
not from the live files. Every store lock is held at once for the short time it takes to
hard-link each file into a hidden snapshot folder and note its size:

- table files and checkpoints are replaced by rename on every write, so a link keeps the
  version that was current, unchanged;
- history segments grow in place, so only the bytes up to the noted size are archived
  (appends happen under the history locks, so the size falls on a record boundary);
- blobs and uploads never change once renamed into place; a link keeps a blob alive even
  if its package is withdrawn while the backup streams.

Everything acknowledged before the snapshot is therefore in it, and the stores agree with
each other as they did at that instant. Links cost no copying; where linking is not
possible (another filesystem) the file is copied instead, still under the locks.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Conflict
from ..sync.keyfiles import is_private_key_file
from .datadir import LOCK_FILE
from .files import TEMP_SUFFIX

if TYPE_CHECKING:
    from . import Stores

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX = ".snapshot-"
#: How long to keep trying to get every lock at once before giving up (409).
LOCK_PATIENCE_S = 30.0


@dataclass
class SnapshotFile:
    name: str  # relative to the data directory, with "/"
    path: Path  # the linked (or copied) file inside the snapshot folder
    size: int  # bytes to archive: the size when the snapshot was taken
    mtime: float
    mode: int


@dataclass
class Snapshot:
    folder: Path
    files: list[SnapshotFile] = field(default_factory=list)
    #: The staging folder as the package catalog knows it: ``<target>/<path>`` of every
    #: package, its bytes being the package's blob. A restored hub started on an empty
    #: staging folder would withdraw every package, so a backup carries it too.
    staged: list[SnapshotFile] = field(default_factory=list)
    taken_at: float = 0.0

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) + sum(f.size for f in self.staged)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def holding_all(locks: list[Any], patience_s: float = LOCK_PATIENCE_S) -> Iterator[None]:
    """Hold every lock at once without risking a deadlock: try each with a short timeout
    and, when one is busy, let go of all and try again a moment later."""
    deadline = time.monotonic() + patience_s
    while True:
        held = []
        for lock in locks:
            if not lock.acquire(timeout=0.05):
                break
            held.append(lock)
        else:
            break
        for lock in reversed(held):
            lock.release()
        if time.monotonic() > deadline:
            raise Conflict("the hub stayed too busy to take a consistent snapshot; try again",
                           code="busy")
        time.sleep(random.uniform(0.005, 0.05))
    try:
        yield
    finally:
        for lock in reversed(held):
            lock.release()


def is_archived(rel_parts: tuple[str, ...]) -> bool:
    """Files a backup leaves out: the lock, unacknowledged temp files, other snapshots."""
    if rel_parts[0].startswith(SNAPSHOT_PREFIX) or rel_parts == (LOCK_FILE,):
        return False
    name = rel_parts[-1]
    return not (name.startswith(".") and name.endswith(TEMP_SUFFIX))


class Snapshotter:
    """Takes snapshots of one open ``Stores``; one at a time."""

    def __init__(self, stores: Stores, extra_locks: Iterable[Any] = ()):
        """``extra_locks`` keep other writers still too (e.g. the package catalog's, held
        while a staged file becomes a blob and a package)."""
        self.stores = stores
        self.extra_locks = list(extra_locks)
        self.busy = threading.Lock()

    def locks(self) -> list[Any]:
        stores = self.stores
        return [*self.extra_locks, *(f.lock for f in stores._files),
                *(h._lock for h in stores.history.values())]

    def take(self) -> Snapshot:
        """Snapshot the data directory; the caller removes it when done with it."""
        if not self.busy.acquire(blocking=False):
            raise Conflict("a backup of this hub is already running", code="backup_running")
        try:
            return self._take()
        finally:
            self.busy.release()

    def _take(self) -> Snapshot:
        data_dir = self.stores.data_dir
        for stale in data_dir.glob(SNAPSHOT_PREFIX + "*"):  # left by a crash mid-backup
            shutil.rmtree(stale, ignore_errors=True)
        # In-memory state first: what the checkpoints hold is then in the history too.
        self.stores.liveness.checkpoint()
        self.stores.sync_state.checkpoint()
        snapshot = Snapshot(data_dir / f"{SNAPSHOT_PREFIX}{secrets.token_hex(4)}")
        snapshot.folder.mkdir(mode=0o700)
        started = time.monotonic()
        try:
            with holding_all(self.locks()):
                snapshot.taken_at = time.time()
                for source, rel in self._live_files():
                    snapshot.files.append(self._link(source, rel, snapshot.folder))
                snapshot.staged = self._staged_files(snapshot)
        except BaseException:
            snapshot.remove()
            raise
        log.info("snapshot of %d files (%d bytes) taken in %.0f ms", len(snapshot.files),
                 snapshot.size, (time.monotonic() - started) * 1000)
        return snapshot

    def _staged_files(self, snapshot: Snapshot) -> list[SnapshotFile]:
        staged = []
        for package in self.stores.packages.all():
            sha = package["sha256"]
            blob = snapshot.folder / "blobs" / sha[:2] / sha
            if blob.is_file():
                staged.append(SnapshotFile(f"{package['target']}/{package['path']}", blob,
                                           package["size"], snapshot.taken_at, 0o644))
        return staged

    def _live_files(self) -> Iterator[tuple[Path, Path]]:
        data_dir = self.stores.data_dir
        for folder, dirs, files in os.walk(data_dir):
            base = Path(folder)
            dirs[:] = sorted(d for d in dirs if not (base == data_dir and
                                                      d.startswith(SNAPSHOT_PREFIX)))
            for name in sorted(files):
                path = base / name
                rel = path.relative_to(data_dir)
                if is_archived(rel.parts) and path.is_file() and not path.is_symlink():
                    if len(rel.parts) == 1 and is_private_key_file(path):
                        log.warning("backup: %s left out: a private key is never backed "
                                    "up with the hub's data (keep it off the hub)", rel)
                        continue
                    yield path, rel

    @staticmethod
    def _link(source: Path, rel: Path, into: Path) -> SnapshotFile:
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        stat = source.stat()  # a history segment may still grow: archive what is there now
        return SnapshotFile(rel.as_posix(), target, stat.st_size, stat.st_mtime,
                            stat.st_mode & 0o777)
