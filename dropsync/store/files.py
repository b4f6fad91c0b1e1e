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
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise_if_disk_full(exc, path)
        raise


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
