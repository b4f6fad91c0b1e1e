"""Durable file writes: the one place that knows how to put bytes on disk safely.

A write is acknowledged only once it survives a power cut: the bytes go to a temp file in
the same folder, are flushed and fsynced, renamed over the target, and the folder itself is
fsynced so the rename is durable too.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import threading
from pathlib import Path

from .. import timings
from ..errors import StorageFull

log = logging.getLogger(__name__)

#: Temp files are hidden and end in this suffix, so a crash leaves something recognisable.
TEMP_SUFFIX = ".tmp"
#: In a data directory: the files the hub replaced or removed while another name still
#: held them (device and inode), so no staged name for one is ever taken in.
FORMER_FILES_NAME = "former-files.json"


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    with timings.timed("store_write"), AtomicFile(path.parent, path.name, mode) as incoming:
        incoming.write(data)
        incoming.commit(path)


def raise_if_disk_full(exc: OSError, path: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFull(f"no space left on the device holding {path.parent}") from exc


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temp files a crash left behind; they were never acknowledged."""
    removed = []
    for candidate in folder.rglob(f".*{TEMP_SUFFIX}"):
        if candidate.is_file():
            candidate.unlink()
            removed.append(candidate)
    return removed


class AtomicFile:
    """A file written in pieces that appears at its final path whole, or not at all.

    ``write_atomically`` needs all the bytes at once; blobs and device uploads arrive as a
    stream too large to hold in memory, and a blob's final name (its SHA-256) is only
    known once the last byte is in. So the bytes go to a hidden temp file in ``folder``
    (same filesystem, so the rename is atomic); ``commit(path)`` fsyncs and renames it into
    place. Leaving the ``with`` block without a commit (an error, a dropped connection)
    deletes the temp file, and a crash leaves only a ``.tmp`` file that the next start
    removes.
    """

    def __init__(self, folder: Path, name_hint: str = "incoming", mode: int = 0o600):
        folder.mkdir(parents=True, exist_ok=True)
        self.temp = temp_path_for(folder / name_hint)
        self.size = 0
        try:
            self._fd: int | None = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                           mode)
        except OSError as exc:
            raise_if_disk_full(exc, self.temp)
            raise

    def write(self, data: bytes) -> int:
        assert self._fd is not None, "write() after commit() or discard()"
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.discard()
            raise_if_disk_full(exc, self.temp)
            raise
        self.size += len(data)
        return len(data)

    def commit(self, path: Path) -> None:
        """fsync the bytes, rename them to ``path`` and make the rename durable."""
        assert self._fd is not None, "commit() after commit() or discard()"
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            path.parent.mkdir(parents=True, exist_ok=True)
            with retiring(path):
                os.replace(self.temp, path)
            fsync_dir(path.parent)
            if path.parent != self.temp.parent:
                fsync_dir(self.temp.parent)
        except OSError as exc:
            self.discard()
            raise_if_disk_full(exc, path)
            raise

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:  # not committed: nothing of it may remain
            self.discard()


# -- the hub's own files, however their names change ---------------------------------------
class HubFiles:
    """Which files are, or were, the hub's own in one data directory.

    A staged file that is one of the hub's has a second name and is refused for that. But
    the hub replaces a store by rename: a hard link made to ``devices.json`` is then the
    only name of the old contents (token hashes) and its link count is 1. So whenever the
    hub replaces or removes one of its files (``retiring``) it looks at the old file
    through a descriptor taken before: still linked somewhere means someone holds a name
    for it, and its device and inode are remembered here, and on disk, for good. Files
    that really go are not remembered, so an inode the file system hands out again to an
    operator's file is not refused.
    """

    def __init__(self, data_dir: Path):
        self.root = os.path.realpath(data_dir) + os.sep
        self.path = Path(self.root) / FORMER_FILES_NAME
        self._lock = threading.RLock()  # remember() writes its record through retiring()
        self.former: set[tuple[int, int]] = set()
        try:
            self.former = {(int(dev), int(ino))
                           for dev, ino in json.loads(self.path.read_bytes())}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as exc:  # never start blind: say so and keep going
            log.error("%s is unreadable (%s): files the hub replaced while linked "
                      "elsewhere are no longer known", self.path, exc)

    def was_hub_file(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) in self.former

    def holds(self, path: str) -> bool:
        return path.startswith(self.root)

    def remember(self, st: os.stat_result) -> None:
        with self._lock:
            if (st.st_dev, st.st_ino) in self.former:
                return
            self.former.add((st.st_dev, st.st_ino))
            log.warning("a file the hub replaced or removed is still linked elsewhere "
                        "(inode %d): remembered, so it is never taken in from the staging "
                        "folder", st.st_ino)
            write_atomically(self.path, json.dumps(sorted(self.former)).encode())

    def open(self) -> HubFiles:
        with _WATCHED_LOCK:
            _WATCHED.append(self)
        return self

    def close(self) -> None:
        with _WATCHED_LOCK:
            if self in _WATCHED:
                _WATCHED.remove(self)


_WATCHED: list[HubFiles] = []
_WATCHED_LOCK = threading.Lock()


class retiring:  # noqa: N801 (used as a statement: ``with retiring(path):``)
    """Around a replace or removal of ``path``: if it is one of an open data directory's
    files and another name still holds the old file afterwards, remember that file."""

    __slots__ = ("path", "fd", "files")

    def __init__(self, path: Path | str):
        self.path = path
        self.fd: int | None = None
        self.files: HubFiles | None = None

    def __enter__(self) -> retiring:
        if not _WATCHED:
            return self
        real = os.path.realpath(self.path)
        self.files = next((f for f in list(_WATCHED) if f.holds(real)), None)
        if self.files is not None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                                  | os.O_CLOEXEC)
            except OSError:  # nothing there yet (or not a file): nothing to retire
                self.fd = None
        return self

    def __exit__(self, kind, *exc_info) -> None:
        if self.fd is None:
            return
        try:
            st = os.fstat(self.fd)
        finally:
            os.close(self.fd)
        if kind is None and st.st_nlink > 0:  # replaced, yet alive under another name
            self.files.remember(st)


def remove_file(path: Path) -> None:
    """Delete one of the hub's files (missing is fine), remembering it if linked elsewhere."""
    with retiring(path):
        path.unlink(missing_ok=True)
