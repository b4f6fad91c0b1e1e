"""Append-only, segmented history (messages, finished commands, events).

History only grows, so it stays off TinyDB's rewrite-the-whole-file path: one record is one
JSON line appended to the newest segment and fdatasynced, a cost that does not depend on how
much history exists. Segments are named by the sequence number of their first record, so
counting and retention need no scan: whole old segments are deleted once the log holds more
than ``max_records``.

A crash can only tear the line being written, which was never acknowledged; opening the log
cuts such a tail off so the next append starts on a clean line.

Queries ("this device's messages, newest first, 50 at a time") must not scan 100,000 records
from disk, so the log keeps a small index in memory: where each record starts in its
segment, and for each key ``index_keys`` gives a record (``device:esp001``...), the sorted
sequence numbers of its records. A page is then a slice of one array and one ``pread`` per
record. The index is rebuilt by reading the segments once at open.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .. import timings
from .files import fsync_dir, raise_if_disk_full, remove_file

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
Record = dict[str, Any]
IndexKeys = Callable[[Record], Iterable[str]]


class _Pending:
    """Records waiting to be appended, then what became of them."""

    __slots__ = ("records", "stored", "error")

    def __init__(self, records: list[Record]):
        self.records = records
        self.stored: list[Record] | None = None
        self.error: BaseException | None = None


class HistoryLog:
    #: Records per segment file before a new one starts.
    segment_records = 10_000
    #: Records kept at least; older whole segments are deleted beyond this.
    max_records = 100_000

    def __init__(self, folder: Path, *, segment_records: int | None = None,
                 max_records: int | None = None, index_keys: IndexKeys | None = None):
        self.folder = folder
        if segment_records:
            self.segment_records = segment_records
        if max_records:
            self.max_records = max_records
        self._index_keys = index_keys
        self._lock = threading.Lock()  # held while writing
        self._queue_lock = threading.Lock()  # guards _queue: appends waiting to be written
        self._queue: list[_Pending] = []
        folder.mkdir(parents=True, exist_ok=True)
        self._segments = sorted(int(p.stem) for p in folder.glob(f"*{SEGMENT_SUFFIX}")
                                if p.stem.isdigit())
        self._next_seq = self._recover_tail() + 1
        self._fd: int | None = None
        #: Per segment: the byte offset where each record starts, then the segment's end.
        self._offsets: dict[int, array] = {}
        #: Per index key: sequence numbers of its records, ascending.
        self._keyed: dict[str, array] = {}
        self._build_index()

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

    def read(self, seq: int) -> Record | None:
        """One record by sequence number; None once retention has dropped it."""
        with self._lock:
            where = self._locate(seq)
        return self._read_at(*where) if where else None

    def find(self, key: str | None = None, *, before_seq: int | None = None,
             after_seq: int | None = None, newest_first: bool = True, limit: int | None = None,
             where: Callable[[Record], bool] | None = None) -> list[Record]:
        """Records under one index key (or all records), in seq order or newest first.

        ``before_seq``/``after_seq`` bound the sequence numbers (exclusive) and serve as the
        paging cursor; ``where`` filters what the key alone cannot; at most ``limit`` come.
        """
        with self._lock:
            first_kept = self._segments[0] if self._segments else self._next_seq
            low = max(first_kept, (after_seq + 1) if after_seq is not None else 0)
            high = min(self._next_seq, before_seq if before_seq is not None else self._next_seq)
            if key is None:
                seqs: Iterable[int] = range(low, high)
            else:
                column = self._keyed.get(key, array("q"))
                seqs = column[bisect.bisect_left(column, low):bisect.bisect_left(column, high)]
        found: list[Record] = []
        for seq in reversed(seqs) if newest_first else seqs:
            record = self.read(seq)
            if record is None or (where is not None and not where(record)):
                continue
            found.append(record)
            if limit is not None and len(found) >= limit:
                break
        return found

    def first_seq_at_or_after(self, key: str | None, field: str, value: Any) -> int:
        """The first seq (under ``key``) whose ``field`` is >= ``value``, for fields that
        rise with seq, such as the hub's receive time: a binary search, not a scan."""
        with self._lock:
            first_kept = self._segments[0] if self._segments else self._next_seq
            if key is None:
                seqs: Any = range(first_kept, self._next_seq)
            else:
                column = self._keyed.get(key, array("q"))
                seqs = column[bisect.bisect_left(column, first_kept):]

        def field_of(seq: int):
            record = self.read(seq)
            return record.get(field, value) if record is not None else value

        position = bisect.bisect_left(seqs, value, key=field_of)
        return seqs[position] if position < len(seqs) else self._next_seq

    # -- writes ------------------------------------------------------------------------
    def append(self, record: Record) -> Record:
        """Store one record durably and return it with its sequence number ``seq``.

        On any failure the segment is cut back to its size before the append, so a record
        the caller was told failed is never found later.
        """
        return self.append_many([record])[0]

    def append_many(self, records: list[Record]) -> list[Record]:
        """Store several records durably: one write and one fdatasync for each segment
        they go into (importing a fleet's devices wrote one per device). On a failure the
        records of the segment being written are cut back, as ``append`` does; those
        already stored in an earlier segment stay, and the exception says what failed.

        Appends that arrive while another is being written are written together right
        after it (group commit): a fleet booting sent 2,000 messages in a few seconds,
        and one fdatasync each queued them for ten.
        """
        pending = _Pending(records)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if pending.stored is None and pending.error is None:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._write(batch)
        if pending.error is not None:
            raise pending.error
        return pending.stored

    def _write(self, batch: list[_Pending]) -> None:
        """Write every record of ``batch`` and tell each its outcome. Holds ``_lock``."""
        records = [record for pending in batch for record in pending.records]
        stored: list[Record] = []
        error: BaseException | None = None
        try:
            while len(stored) < len(records):
                stored.extend(self._write_segment(records[len(stored):]))
        except BaseException as exc:  # handed to the appends it concerns
            error = exc
        start = 0
        for pending in batch:
            end = start + len(pending.records)
            if end <= len(stored):
                pending.stored = stored[start:end]
            else:
                pending.error = error
            start = end

    def _write_segment(self, records: list[Record]) -> list[Record]:
        """Those of ``records`` that fit in the current segment, written and synced."""
        with timings.timed("history_append"):
            size_before = None
            try:
                self._open_segment_with_room()  # may create a file: can hit a full disk
                room = self.segment_records - (self._next_seq - self._segments[-1])
                entries = [{"seq": self._next_seq + i, **record}
                           for i, record in enumerate(records[:room])]
                lines = [(json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
                          + "\n").encode() for entry in entries]
                size_before = os.fstat(self._fd).st_size
                view = memoryview(b"".join(lines))
                while view:
                    view = view[os.write(self._fd, view):]
                os.fdatasync(self._fd)
            except OSError as exc:
                if size_before is not None:
                    self._undo_append(size_before)
                raise_if_disk_full(exc, self.folder)
                raise
            start = size_before
            for entry, line in zip(entries, lines, strict=True):
                self._remember(entry, start, start + len(line))
                start += len(line)
            self._next_seq += len(entries)
            self._drop_old_segments()
            return entries

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
            remove_file(self._path(oldest))
            self._segments.pop(0)
            self._offsets.pop(oldest, None)
            self._forget_before(following)
            log.debug("history %s: dropped segment %d by retention", self.folder.name, oldest)

    # -- the index ---------------------------------------------------------------------
    def _build_index(self) -> None:
        for first in self._segments:
            offset = 0
            data = self._path(first).read_bytes()
            for line in data.splitlines(keepends=True):
                record = None  # without index keys only the offsets matter: skip parsing
                if self._index_keys is not None:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        pass  # unreadable but complete lines keep their seq slot
                self._remember(record, offset, offset + len(line), first=first)
                offset += len(line)

    def _remember(self, record: Record | None, start: int, end: int,
                  first: int | None = None) -> None:
        first = self._segments[-1] if first is None else first
        offsets = self._offsets.get(first)
        if offsets is None:
            offsets = self._offsets[first] = array("q", [start])
        offsets[-1] = start  # the segment's end so far is where this record starts
        offsets.append(end)
        if record is None or self._index_keys is None:
            return
        seq = first + len(offsets) - 2
        for key in self._index_keys(record):
            column = self._keyed.get(key)
            if column is None:
                column = self._keyed[key] = array("q")
            column.append(seq)

    def _forget_before(self, first_kept: int) -> None:
        for key in list(self._keyed):
            column = self._keyed[key]
            cut = bisect.bisect_left(column, first_kept)
            if cut == len(column):
                del self._keyed[key]
            elif cut:
                del column[:cut]

    def _locate(self, seq: int) -> tuple[int, int, int] | None:
        """(segment, start, end) of a record, if still kept."""
        if not self._segments or not self._segments[0] <= seq < self._next_seq:
            return None
        first = self._segments[bisect.bisect_right(self._segments, seq) - 1]
        offsets = self._offsets.get(first)
        index = seq - first
        if offsets is None or index + 1 >= len(offsets):
            return None
        return first, offsets[index], offsets[index + 1]

    def _read_at(self, first: int, start: int, end: int) -> Record | None:
        try:
            fd = os.open(self._path(first), os.O_RDONLY)
        except FileNotFoundError:  # dropped by retention meanwhile
            return None
        try:
            line = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
        try:
            return json.loads(line)
        except ValueError:
            return None

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
