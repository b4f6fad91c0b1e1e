"""Backups as tar archives, and restoring one into an empty data directory.

The hub streams an uncompressed tar of a snapshot (``store.snapshot``) from its admin API;
the ``dropsync backup`` command gzips it to a file as it arrives. No step holds the
archive in memory or writes it to a second place on the hub's disk.

Layout of an archive::

    dropsync-backup.json    what it is: format, hub version, when, how many files/bytes
    data/...                the data directory (stores, history, blobs, uploads, secret
                            key), without the lock and temp files
    staging/<target>/...    the staging folder as the packages in the backup know it:
                            tar hard links to their blobs, so no byte is stored twice
    config/<name>           the settings file the hub was started with, if any
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import BadRequest
from ..hubclient import ProgressReader
from ..store.snapshot import Snapshot

FORMAT = 1
MANIFEST = "dropsync-backup.json"
DATA_PREFIX = "data/"
STAGING_PREFIX = "staging/"
CONFIG_PREFIX = "config/"
BLOCK = tarfile.BLOCKSIZE
READ_SIZE = 256 * 1024
#: Restore unpacks at most this many times the archive's own size (plus the floor below):
#: stores compress some ten times and blobs hardly, so more is a bomb, not a backup.
MAX_EXPANSION = 100
EXPANSION_FLOOR_BYTES = 16 * 1024 * 1024
#: Restore leaves at least this much free on the target's file system.
RESTORE_RESERVE_BYTES = 16 * 1024 * 1024


def _header(name: str, size: int, mtime: float, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), mode
    return info.tobuf(tarfile.PAX_FORMAT)


def _link_header(name: str, target: str, mtime: float, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime, info.mode = tarfile.LNKTYPE, target, int(mtime), mode
    return info.tobuf(tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class BackupArchive:
    """The tar stream of one snapshot: an iterable of bytes that removes the snapshot
    when closed (the WSGI server closes it when the client is done or gone)."""

    def __init__(self, snapshot: Snapshot, config_file: str | Path | None = None):
        self.snapshot = snapshot
        self.config_file = Path(config_file) if config_file else None
        manifest = {"format": FORMAT, "hub_version": __version__,
                    "taken_at": snapshot.taken_at, "files": len(snapshot.files),
                    "staged_files": len(snapshot.staged), "bytes": snapshot.size,
                    "config": self.config_file.name if self._has_config() else None}
        self.manifest = json.dumps(manifest, indent=2).encode()

    def _has_config(self) -> bool:
        return self.config_file is not None and self.config_file.is_file()

    @property
    def size(self) -> int:
        """Bytes the stream will have (a close estimate for a progress bar: very long
        names take an extra header)."""
        total = BLOCK + len(self.manifest) + len(_padding(len(self.manifest)))
        for member in self.snapshot.files:
            total += BLOCK + member.size + len(_padding(member.size))
        total += BLOCK * len(self.snapshot.staged)
        if self._has_config():
            size = self.config_file.stat().st_size
            total += BLOCK + size + len(_padding(size))
        return total + 2 * BLOCK

    def __iter__(self) -> Iterator[bytes]:
        yield _header(MANIFEST, len(self.manifest), self.snapshot.taken_at, 0o600)
        yield self.manifest + _padding(len(self.manifest))
        for member in self.snapshot.files:
            yield _header(DATA_PREFIX + member.name, member.size, member.mtime, member.mode)
            yield from self._content(member.path, member.size)
        for member in self.snapshot.staged:  # same bytes as a blob: a link to it
            yield _link_header(STAGING_PREFIX + member.name,
                               DATA_PREFIX + member.path.relative_to(self.snapshot.folder)
                               .as_posix(), member.mtime, member.mode)
        if self._has_config():
            size = self.config_file.stat().st_size
            yield _header(CONFIG_PREFIX + self.config_file.name, size, time.time(), 0o600)
            yield from self._content(self.config_file, size)
        yield b"\0" * (2 * BLOCK)  # end of archive

    @staticmethod
    def _content(path: Path, size: int) -> Iterator[bytes]:
        remaining = size
        with open(path, "rb") as source:
            while remaining:
                data = source.read(min(READ_SIZE, remaining))
                if not data:  # cannot happen to a snapshot file; never emit a short member
                    raise OSError(f"{path} is shorter than when the snapshot was taken")
                remaining -= len(data)
                yield data
        yield _padding(size)

    def close(self) -> None:
        self.snapshot.remove()


# -- restoring -------------------------------------------------------------------------
class RestoreError(BadRequest):
    pass


def _safe_relative(name: str, prefix: str) -> PurePosixPath:
    """``name`` under ``prefix``, as a path that stays inside the folder it is unpacked to:
    no absolute part, no ``..``, nothing but a plain name after the prefix."""
    rel = PurePosixPath(name[len(prefix):])
    if not name.startswith(prefix) or rel.is_absolute() or not rel.parts \
            or ".." in rel.parts or "\0" in name:
        raise RestoreError(f"the archive holds an unsafe name: {name!r}")
    return rel


class _Room:
    """What a restore may still write: the free space of the target's file system (less a
    reserve) and a sane multiple of the archive's size, checked before each member is
    written, never after it filled the disk."""

    def __init__(self, archive: Path, folder: Path):
        self.folder = folder
        self.limit = archive.stat().st_size * MAX_EXPANSION + EXPANSION_FLOOR_BYTES
        self.written = 0

    def take(self, member: tarfile.TarInfo, size: int) -> None:
        if member.issparse():
            raise RestoreError(f"{member.name!r} is a sparse member: the hub writes none, "
                               "so this is not one of its backups")
        free = shutil.disk_usage(self.folder).free - RESTORE_RESERVE_BYTES
        if size > free:
            raise RestoreError(f"{member.name!r} needs {size} bytes and the target has "
                               f"{max(free, 0)} bytes of free space to spare: refused "
                               "before writing")
        if self.written + size > self.limit:
            raise RestoreError(f"{member.name!r} would unpack the archive to more than "
                               f"{MAX_EXPANSION} times its size ({self.written + size} "
                               "bytes): refused as a decompression bomb")
        self.written += size


def _blob_name(rel: PurePosixPath) -> str | None:
    """The SHA-256 a blob's name promises (``blobs/ab/<sha256>``), else None."""
    if len(rel.parts) == 3 and rel.parts[0] == "blobs" and len(rel.parts[2]) == 64 \
            and "." not in rel.parts[2]:
        return rel.parts[2]
    return None


def _refuse_unless_empty(folder: Path, what: str) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RestoreError(f"{folder} is not empty: restore {what} only into an empty or "
                           "new folder, so nothing there is overwritten")


def restore_archive(archive: Path, data_dir: Path, staging_dir: Path | None,
                    on_progress: Callable[[int], None] | None = None) -> dict:
    """Unpack ``archive`` into ``data_dir`` and ``staging_dir`` (None: leave the staging
    folder as it is), which must be missing or empty.

    Everything lands in a hidden folder beside ``data_dir`` first and is renamed into
    place at the end, so a damaged archive (bad gzip, a blob whose bytes do not hash to
    its name) leaves nothing half-restored behind. Returns the archive's manifest with
    counts of what was restored.
    """
    data_dir = data_dir.resolve()
    _refuse_unless_empty(data_dir, "the data")
    if staging_dir is not None:
        staging_dir = staging_dir.resolve()
        _refuse_unless_empty(staging_dir, "the staging folder (or keep it as it is)")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = data_dir.with_name(f".{data_dir.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    manifest: dict | None = None
    room = _Room(archive, staging)
    counts = {"files": 0, "bytes": 0, "blobs_verified": 0, "staged_files": 0,
              "config": None}
    try:
        with open(archive, "rb") as raw:
            reader = ProgressReader(raw, on_progress)
            with tarfile.open(fileobj=reader, mode="r|*") as tar:
                for member in tar:
                    if member.name == MANIFEST:
                        manifest = json.loads(tar.extractfile(member).read())
                        if manifest.get("format") != FORMAT:
                            raise RestoreError(f"unknown backup format {manifest.get('format')}")
                        continue
                    if member.islnk() and member.name.startswith(STAGING_PREFIX):
                        if staging_dir is not None:  # a staged file: a copy of its blob
                            rel = _safe_relative(member.name, STAGING_PREFIX)
                            blob_rel = _safe_relative(member.linkname, DATA_PREFIX)
                            if _blob_name(blob_rel) is None:
                                raise RestoreError(f"{member.name!r} links to "
                                                   f"{member.linkname!r}, not to a blob")
                            blob = staging / "data" / blob_rel
                            target = staging / "staging" / rel
                            room.take(member, blob.stat().st_size)
                            target.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copyfile(blob, target)  # the operator's, not the blob
                            os.chmod(target, member.mode & 0o777 or 0o644)
                            counts["staged_files"] += 1
                        continue
                    if member.isdir():
                        continue  # folders are made as needed
                    if not member.isfile():  # the hub writes files and staged blob links
                        raise RestoreError(f"{member.name!r} is a link or a special file: "
                                           "a DropSync backup holds none")
                    if member.name.startswith(DATA_PREFIX):
                        rel = _safe_relative(member.name, DATA_PREFIX)
                        target = staging / "data" / rel
                    elif member.name.startswith(CONFIG_PREFIX):
                        rel = _safe_relative(member.name, CONFIG_PREFIX)
                        target = staging / "data" / "restored-config" / rel.name
                        counts["config"] = str(data_dir / "restored-config" / rel.name)
                    else:
                        raise RestoreError(f"unexpected member {member.name!r}: is this a "
                                           "DropSync backup?")
                    room.take(member, member.size)
                    digest = _write_member(tar.extractfile(member), target,
                                           member.mode & 0o777 or 0o600,
                                           hashed=_blob_name(rel) is not None
                                           and member.name.startswith(DATA_PREFIX))
                    expected = _blob_name(rel) if member.name.startswith(DATA_PREFIX) else None
                    if expected is not None:
                        if digest != expected:
                            raise RestoreError(f"blob {expected} in the archive is damaged "
                                               f"(its bytes hash to {digest})")
                        counts["blobs_verified"] += 1
                    counts["files"] += 1
                    counts["bytes"] += member.size
        if manifest is None:
            raise RestoreError(f"{archive} has no {MANIFEST}: not a DropSync backup")
        _move_into_place(staging / "data", data_dir, 0o700)
        if staging_dir is not None:
            _move_into_place(staging / "staging", staging_dir, 0o755)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise RestoreError(f"{archive} cannot be read as a backup: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**manifest, "restored": counts}


def _move_into_place(unpacked: Path, folder: Path, default_mode: int) -> None:
    """Rename ``unpacked`` to ``folder`` (missing or empty), keeping the mode (and setgid
    bit) an existing empty folder had: install-service made them for nginx and operators."""
    unpacked.mkdir(exist_ok=True)
    mode = default_mode
    if folder.exists():
        mode = stat.S_IMODE(folder.stat().st_mode)
        folder.rmdir()  # empty, checked before anything was unpacked
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(unpacked, folder)
    os.chmod(folder, mode)


def _write_member(source: io.BufferedReader, target: Path, mode: int, *,
                  hashed: bool) -> str | None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    hasher = hashlib.sha256() if hashed else None
    with open(target, "wb") as out:
        while data := source.read(READ_SIZE):
            if hasher is not None:
                hasher.update(data)
            out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(target, mode)
    return hasher.hexdigest() if hasher is not None else None
