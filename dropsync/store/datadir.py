"""The exclusive claim one hub process holds on its data directory.

The hub keeps its stores in memory, so a second writer would silently lose data. An
``flock`` on ``hub.lock`` makes the claim; the kernel drops it when the holder dies, so a
crash never leaves a stale lock behind. The lock file also tells other local processes
(the CLI) who holds the directory and how to reach that hub.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import DataDirBusy

LOCK_FILE = "hub.lock"


class DataDirLock:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None
        self._info: dict[str, Any] = {}

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.path) or {}
            raise DataDirBusy(self.data_dir, holder.get("pid")) from None
        self._fd = fd
        self.publish({"pid": os.getpid(), "started_at": time.time()})

    def publish(self, info: dict[str, Any]) -> None:
        """Record facts about the holder (pid, URL, local CLI token) in the lock file."""
        assert self._fd is not None, "publish() needs the lock"
        self._info.update(info)
        data = json.dumps(self._info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def read_holder(path: Path) -> dict[str, Any] | None:
    """What the holder published, retrying briefly while it is still writing it."""
    for _ in range(20):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        if text:
            try:
                return json.loads(text)
            except ValueError:
                pass
        time.sleep(0.05)
    return None


def current_holder(data_dir: Path) -> dict[str, Any] | None:
    """The running hub's published info when some process holds ``data_dir``, else None."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(path) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
