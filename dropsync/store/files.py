"""Durable file writes: the one place that knows how to put bytes on disk safely.

A write is acknowledged only once it survives a power cut: the bytes go to a temp file in
the same folder, are flushed and fsynced, renamed over the target, and the folder itself is
fsynced so the rename is durable too.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from .. import timings
from ..errors import StorageFull

#: Temp files are hidden and end in this suffix, so a crash leaves something recognisable.
TEMP_SUFFIX = ".tmp"


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
