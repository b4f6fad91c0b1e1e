"""Watching the staging folder: file events in, one ingest per complete file out.

A file becomes a package only once it is complete. watchdog's inotify observer reports a
close after writing (``FileClosedEvent``); a rename into place arrives as a move (inside
the folder) or a bare create (from elsewhere on the same filesystem, with no open or close
at all). So the watcher counts opens and closes per path, and a path is *ready* when no
writer holds it open and its size, mtime and inode have held still for ``settle_s``. An
open the events missed (a file written in a folder created a moment earlier, before it
was watched) is caught by asking the kernel for a read lease, granted only when no one
is writing. ``created`` fires before a copy ends and the kernel silently drops events when its queue
overflows (watchdog issues 586, 654), hence the settle time and the periodic rescan: the
rescan also picks up files dropped while the hub was down, and an inotify watch limit or
a network filesystem can be met with the polling observer (``STAGING_OBSERVER=polling``),
which sees no opens or closes and relies on the settle time alone.

Many events for one path collapse into one pending entry, and a file whose size, mtime and
inode match what was taken in last is not read again, so each complete file is ingested
exactly once. Events are turned into pending entries on watchdog's thread; all ingesting,
withdrawing and rescanning happens on this module's one ``staging-settle`` thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ..clock import now_iso
from ..errors import StorageFull
from .staging import StagedFileChanged, Staging, file_stamp

log = logging.getLogger(__name__)

OBSERVERS = ("inotify", "polling")
#: How often the settle thread looks at pending files (a look at nothing costs nothing).
TICK_S = 0.05
#: After a failed ingest (e.g. disk full), wait at least this long before trying again.
RETRY_AFTER_S = 5.0


def is_open_for_writing(path: str) -> bool | None:
    """Whether some process holds ``path`` open for writing; None when it cannot be told.

    Events can miss an open: a file written in a folder created a moment earlier (before
    watchdog watches the folder), or found by a rescan. Linux grants a read lease only
    when no process has the file open for writing, so asking for one (and giving it back
    at once) answers exactly that. A writer opening the file in that instant would make
    the kernel signal us: SIGURG, whose default is to be ignored. Not possible without
    owning the file or CAP_LEASE, nor on network filesystems: None, and the settle time
    alone decides.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def folder_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def current_stamp(path: str) -> dict[str, int] | None:
    """The staged file's stamp, which must hold still for the settle time (None: gone)."""
    try:
        return file_stamp(os.stat(path))
    except OSError:
        return None


@dataclass
class PendingFile:
    """A path that changed and has not been taken in since."""

    last_event: float
    #: Writers that opened the file and have not closed it yet (inotify only).
    opens: int = 0
    stamp: dict[str, int] | None = None
    stable_since: float = 0.0
    not_before: float = 0.0


class _EventHandler(FileSystemEventHandler):
    def __init__(self, watcher: StagingWatcher):
        self.watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.watcher.on_event(event)
        except Exception:  # an event must never kill watchdog's thread
            log.exception("staging watcher: could not handle %r", event)


class StagingWatcher:
    def __init__(self, staging: Staging, *, settle_s: float, rescan_s: float,
                 observer: str = "inotify"):
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}")
        self.staging = staging
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self.observer_kind = observer
        self._pending: dict[str, PendingFile] = {}
        self._gone: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rescan_at = 0.0  # rescan at once when started
        self._observer: BaseObserver | None = None
        self._watched: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self.last_rescan: str | None = None
        self.ingested = 0

    # -- life cycle --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Observe the staging folder and start the settle thread (rescan first)."""
        if self.running:
            return
        self.staging.root.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._observer = self._start_observer()
        self._thread = threading.Thread(target=self._run, name="staging-settle", daemon=True)
        self._thread.start()
        log.info("watching staging folder %s (%s observer, settle %.1fs, rescan every %.0fs)",
                 self.staging.root, self.observer_kind, self.settle_s, self.rescan_s)

    def _start_observer(self) -> BaseObserver:
        observer: BaseObserver = PollingObserver() if self.observer_kind == "polling" \
            else Observer()
        self._schedule(observer)
        try:
            observer.start()
        except OSError as exc:
            if self.observer_kind == "polling":
                raise
            log.warning("staging watcher: inotify is not available (%s); polling instead. "
                        "Set STAGING_OBSERVER=polling to choose this.", exc)
            self.observer_kind = "polling"
            return self._start_observer()
        return observer

    def stop(self) -> None:
        """Stop the settle thread (letting an ingest under way finish), then watchdog."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def state(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self._pending)
        return {"running": self.running, "observer": self.observer_kind,
                "settle_s": self.settle_s, "rescan_s": self.rescan_s, "pending": pending,
                "last_rescan": self.last_rescan, "ingested": self.ingested}

    # -- events (watchdog's thread) ----------------------------------------------------
    def on_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = os.fsdecode(event.src_path)
        if event.is_directory:
            if kind in ("created", "deleted", "moved"):
                self.request_rescan()  # a folder's files may have come or gone unseen
            return
        if kind == "moved":
            self._file_gone(src)
            dest = os.fsdecode(event.dest_path)
            if self.staging.folder.is_candidate(dest):
                self._file_changed(dest, opens=0)  # renamed into place: complete
        elif not self.staging.folder.is_candidate(src):
            return  # temp and hidden names, files at the top: never packages
        elif kind == "deleted":
            self._file_gone(src)
        elif kind == "created":
            self._file_changed(src)
        elif kind == "closed":
            self._file_changed(src, opens=-1)
        elif kind in ("modified", "attrib"):
            self._file_changed(src, writing=kind == "modified")
        elif kind == "opened":
            self._adjust_opens(src, +1)
        elif kind == "closed_no_write":
            self._adjust_opens(src, -1)

    def _file_changed(self, path: str, opens: int | None = None, writing: bool = False) -> None:
        now = time.monotonic()
        stamp = current_stamp(path)  # the settle time runs from this event, not the next tick
        with self._lock:
            self._gone.discard(path)
            pending = self._pending.setdefault(path, PendingFile(last_event=now))
            pending.last_event = now
            if stamp is not None and stamp != pending.stamp:
                pending.stamp, pending.stable_since = stamp, now
            if opens == 0:
                pending.opens = 0
            elif opens is not None:
                pending.opens = max(0, pending.opens + opens)
            elif writing and pending.opens == 0 and self.observer_kind == "inotify":
                pending.opens = 1  # written by a writer whose open we did not see

    def _adjust_opens(self, path: str, delta: int) -> None:
        """Opens and read-only closes matter only for files already pending: reading a
        file (the hub's own ingest included) must not make it pending again."""
        with self._lock:
            pending = self._pending.get(path)
            if pending is not None:
                pending.opens = max(0, pending.opens + delta)
                pending.last_event = time.monotonic()

    def _file_gone(self, path: str) -> None:
        with self._lock:
            self._pending.pop(path, None)
            self._gone.add(path)

    def request_rescan(self) -> None:
        """Rescan the whole folder once events have quietened for a settle time."""
        with self._lock:
            self._rescan_at = time.monotonic() + self.settle_s

    # -- the settle thread -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._withdraw_gone()
                if time.monotonic() >= self._rescan_at:
                    self.rescan()
                self._ingest_settled()
            except Exception:  # keep watching; the next rescan repairs what was missed
                log.exception("staging watcher: unexpected error")
            self._stop.wait(TICK_S)

    def rescan(self) -> None:
        """Compare the whole folder with the packages: withdraw what is gone, and let
        what is new or changed settle (events may have been lost, or the hub was down)."""
        self._keep_watching()
        waiting = self.staging.reconcile()
        now = time.monotonic()
        with self._lock:
            self._rescan_at = now + self.rescan_s
            for staged in waiting:
                self._pending.setdefault(str(staged.path), PendingFile(last_event=now))
            for pending in self._pending.values():
                if now - pending.last_event > self.rescan_s:
                    pending.opens = 0  # a close event was lost: trust the settle time
        self.last_rescan = now_iso()

    def _keep_watching(self) -> None:
        """Watch the folder again when the one watched is no longer the one at its path
        (deleted or moved away, and made again) or the watch has ended: the rescan that
        follows catches up on what happened meanwhile."""
        observer, watched = self._observer, self._watched
        current = folder_identity(self.staging.root)
        if observer is None or current is None or (
                current == watched and any(e.is_alive() for e in observer.emitters)):
            return
        log.warning("staging folder %s: watching it again", self.staging.root)
        observer.unschedule_all()
        self._schedule(observer)

    def _schedule(self, observer: BaseObserver) -> None:
        self._watched = folder_identity(self.staging.root)
        observer.schedule(_EventHandler(self), str(self.staging.root), recursive=True)

    def _withdraw_gone(self) -> None:
        with self._lock:
            gone, self._gone = self._gone, set()
        for path in gone:
            slot = self.staging.folder.slot_of(path)
            if slot is None:
                continue
            self.staging.withdraw_missing(slot)
            for other in self.staging.folder.paths_for(slot):
                if other.is_file():  # what the gone file shadowed takes over
                    self._file_changed(str(other), opens=0)
                    break

    def _ingest_settled(self) -> None:
        for path in self._settled_paths():
            if self._stop.is_set():
                return
            if is_open_for_writing(path):  # a writer whose open we never saw
                self._file_changed(path)   # settle again once it lets go
                continue
            try:
                package, changed = self.staging.ingest_staged_file(path)
            except StagedFileChanged:
                self._file_changed(path)
                continue
            except StorageFull:  # reported (health, the staging report), no traceback
                self._retry_later(path)
                continue
            except Exception:
                log.exception("staging watcher: could not take in %s; will retry", path)
                self._retry_later(path)
                continue
            if changed:
                self.ingested += 1

    def _settled_paths(self) -> list[str]:
        """Paths no writer holds open whose size, mtime and inode held for settle_s;
        they leave the pending set here, so each is ingested once."""
        now = time.monotonic()
        ready = []
        with self._lock:
            candidates = [(path, p) for path, p in self._pending.items()
                          if p.opens == 0 and now >= p.not_before]
        for path, pending in candidates:
            stamp = current_stamp(path)
            with self._lock:
                if self._pending.get(path) is not pending:
                    continue
                if stamp is None:  # gone (a delete event follows) or unreadable
                    del self._pending[path]
                    self._gone.add(path)
                elif stamp != pending.stamp:
                    pending.stamp, pending.stable_since = stamp, now
                elif now - max(pending.stable_since, pending.last_event) >= self.settle_s:
                    del self._pending[path]
                    ready.append(path)
        return ready

    def _retry_later(self, path: str) -> None:
        now = time.monotonic()
        with self._lock:
            pending = self._pending.setdefault(path, PendingFile(last_event=now))
            pending.not_before = now + max(RETRY_AFTER_S, self.settle_s)
