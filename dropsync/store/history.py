"""Append-only, segmented history (messages, finished commands, events).

History only grows, so it stays off TinyDB's rewrite-the-whole-file path: one record is one
JSON line appended to the newest segment and fdatasynced, a cost that does not depend on how
much history exists. Segments are named by the sequence number of their first record, so
counting and retention need no scan: whole old segments are deleted once the log holds more
than ``max_records``.

A crash can only tear the line being written, which was never acknowledged; opening the log
cuts such a tail off so the next append starts on a clean line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .files import fsync_dir, raise_if_disk_full

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
Record = dict[str, Any]


class HistoryLog:
    #: Records per segment file before a new one starts.
    segment_records = 10_000
    #: Records kept at least; older whole segments are deleted beyond this.
    max_records = 100_000

    def __init__(self, folder: Path, *, segment_records: int | None = None,
                 max_records: int | None = None):
        self.folder = folder
        if segment_records:
            self.segment_records = segment_records
        if max_records:
            self.max_records = max_records
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self._segments = sorted(int(p.stem) for p in folder.glob(f"*{SEGMENT_SUFFIX}")
                                if p.stem.isdigit())
        self._next_seq = self._recover_tail() + 1
        self._fd: int | None = None

    # -- reads -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._next_seq - self._segments[0] if self._segments else 0

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def records(self, *, newest_first: bool = False,
                where: Callable[[Record], bool] | None = None) -> Iterator[Record]:
        """Every stored record in order (or newest first), optionally filtered."""
        with self._lock:  # appends flush and sync before releasing the lock
            segments = list(self._segments)
        for first in reversed(segments) if newest_first else segments:
            lines = self._read_segment(first)
            for record in reversed(lines) if newest_first else lines:
                if where is None or where(record):
                    yield record

    # -- writes ------------------------------------------------------------------------
    def append(self, record: Record) -> Record:
        """Store one record durably and return it with its sequence number ``seq``.

        On any failure the segment is cut back to its size before the append, so a record
        the caller was told failed is never found later.
        """
        with self._lock:
            entry = {"seq": self._next_seq, **record}
            line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            size_before = None
            try:
                self._open_segment_with_room()  # may create a file: can hit a full disk too
                size_before = os.fstat(self._fd).st_size
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fdatasync(self._fd)
            except OSError as exc:
                if size_before is not None:
                    self._undo_append(size_before)
                raise_if_disk_full(exc, self.folder)
                raise
            self._next_seq += 1
            self._drop_old_segments()
            return entry

    def close(self) -> None:
        with self._lock:
            self._close_segment()

    # -- internals ---------------------------------------------------------------------
    def _path(self, first: int) -> Path:
        return self.folder / f"{first:020d}{SEGMENT_SUFFIX}"

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _undo_append(self, size_before: int) -> None:
        path = self._path(self._segments[-1])
        self._close_segment()
        os.truncate(path, size_before)

    def _open_segment_with_room(self) -> None:
        if self._segments and self._next_seq - self._segments[-1] < self.segment_records:
            if self._fd is None:
                self._fd = os.open(self._path(self._segments[-1]), APPEND_FLAGS, 0o600)
            return
        self._close_segment()
        self._fd = os.open(self._path(self._next_seq), APPEND_FLAGS, 0o600)
        self._segments.append(self._next_seq)
        fsync_dir(self.folder)

    def _drop_old_segments(self) -> None:
        """Delete the oldest segments while the rest still hold ``max_records``."""
        while len(self._segments) > 1:
            oldest, following = self._segments[0], self._segments[1]
            if self._next_seq - following < self.max_records:
                break
            self._path(oldest).unlink(missing_ok=True)
            self._segments.pop(0)
            log.debug("history %s: dropped segment %d by retention", self.folder.name, oldest)

    def _read_segment(self, first: int) -> list[Record]:
        try:
            data = self._path(first).read_bytes()
        except FileNotFoundError:  # dropped by retention while we were reading
            return []
        records = []
        for line in data.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a torn tail still being cut off, never an acknowledged record
        return records

    def _recover_tail(self) -> int:
        """Cut any torn tail off the newest segment; return the last good sequence number."""
        while self._segments:
            path = self._path(self._segments[-1])
            data = path.read_bytes() if path.exists() else b""
            good_end, last_seq = 0, None
            offset = 0
            for line in data.splitlines(keepends=True):
                offset += len(line)
                if not line.endswith(b"\n"):
                    break
                try:
                    last_seq = json.loads(line)["seq"]
                except (ValueError, KeyError, TypeError):
                    continue
                good_end = offset
            if good_end < len(data):
                log.warning("history %s: cut %d torn bytes off %s", self.folder.name,
                            len(data) - good_end, path.name)
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
            if last_seq is not None:
                return last_seq
            # An empty segment (crash right after creating it): drop it and look further back.
            path.unlink(missing_ok=True)
            fsync_dir(self.folder)
            first = self._segments.pop()
            if not self._segments:
                return first - 1
        return 0
