"""The staging folder as the desired state: ``staging/<target>/<path>`` becomes packages.

``target`` is a device id, ``group-<name>`` or ``all``; the rest of the path, subfolders
included, is where the file goes on the device. A new file is offered to the targeted
devices, a changed file replaces the old version, a removed file is withdrawn.

What is never taken in:

- temp and hidden names (``.x``, ``x~``, ``*.part``, ``*.tmp``, ``*.swp``,
  ``*.crdownload``): editors, browsers and copy tools write these before the real file;
- files at the top of the folder (this README, for one): they name no target;
- anything whose real location is outside the staging folder (a symlink out), and any
  file with more than one hard link (the other name may be the hub's own data, such as
  ``data/devices.json``), so dropping a link can never publish the hub's own data or
  ``/etc`` to a device.

The central office's feeds (many sites, ``sites/layout.py``) land below
``staging/@central/<feed>/``, each laid out like the folder itself: ``<target>/<path>``
there stands for the same package as ``<target>/<path>`` here. When both exist, the site's
own file wins (each site is the authority for its own devices), and between two feeds the
narrower one wins (one site's, then a group of sites', then all sites'); the file that
loses is reported as ``shadowed``, and takes over when the winner is removed.

Names that are not a valid target, or not portable to a device's flash file system, are
*reported* (health, log, admin API), as are target folders that name no known device or
group, rather than silently ignored. Files in an unknown target's folder are still taken in,
so a device registered later finds them waiting.

This module decides what a staged file is and takes it in; *when* a file is complete
enough to take in is the watcher's business (``watcher.py``).
"""

from __future__ import annotations

import logging
import os
import stat
import string
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .. import timings
from ..errors import BadRequest, Conflict, Forbidden, PayloadTooLarge, StorageFull, ValidationFailed
from ..fleet.devices import DEVICE_ID_RE, GROUP_RE
from ..sites.layout import CENTRAL_SUBDIR, feed_rank
from ..store import Document
from ..store.files import AtomicFile
from .keyfiles import PRIVATE_KEY_SNIFF, ReadAt, looks_like_private_key, read_at_of
from .packages import ALL_TARGET, GROUP_PREFIX, PackageCatalog

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".part", ".tmp", ".swp", ".crdownload")
#: Characters a staged path may use: portable to LittleFS/SPIFFS and to C code on a device.
PATH_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-+()@,=# ")
MAX_PATH_LENGTH = 200
#: What the boards' flash can hold (the firmware checks the same, src/dropsync_core/sync.h):
#: ESP8266 LittleFS allows 31 characters a name (LFS_NAME_MAX 32 with the terminator); a
#: longer one downloads and then never goes into place. Folders at most 8 deep.
MAX_NAME_LENGTH = 31
MAX_FOLDER_DEPTH = 8
COPY_BUFFER = 1024 * 1024
OUTSIDE_MESSAGE = "a symlink that leads outside the staging folder; refused"
HARDLINK_MESSAGE = ("a file with more than one hard link (its other name may be anywhere, "
                    "the hub's data folder included); refused: copy the file instead")
NOT_REGULAR_MESSAGE = ("not a regular file (a FIFO, a socket or a device); refused: it is "
                       "never opened")
HUB_FILE_MESSAGE = ("one of the hub's own files (its data folder's), now or before a rewrite "
                    "left this the only name of the old contents; refused")


def is_ignored_name(name: str) -> bool:
    """Temp and hidden names: never a package, never reported."""
    return name.startswith(".") or name.endswith("~") or \
        name.lower().endswith(IGNORED_SUFFIXES)


def target_problem(target: str) -> str | None:
    """Why ``target`` cannot be a target folder name, or None when it can."""
    if target == ALL_TARGET:
        return None
    if target.startswith(GROUP_PREFIX):
        if GROUP_RE.fullmatch(target[len(GROUP_PREFIX):]):
            return None
        return "a group folder is group-<name>, the name 1-64 letters, digits, '-' or '_'"
    if DEVICE_ID_RE.fullmatch(target):
        return None
    return "a target folder is a device id, group-<name> or all"


def path_problem(parts: Iterable[str]) -> str | None:
    """Why a path below a target folder cannot go to a device, or None when it can."""
    parts = list(parts)
    if not parts:
        return "a file needs a name below its target folder"
    for part in parts:
        if part in ("", ".", ".."):
            return "path components cannot be empty, '.' or '..'"
        if not set(part) <= PATH_CHARACTERS or part.startswith(" ") or part.endswith(" "):
            return ("use ASCII letters, digits, spaces and ._-+()@,=# in names "
                    "(no leading or trailing space)")
        if len(part) > MAX_NAME_LENGTH:
            return (f"a name longer than {MAX_NAME_LENGTH} characters, which an ESP8266's "
                    f"LittleFS cannot store: {part!r}")
    if len("/".join(parts)) > MAX_PATH_LENGTH:
        return f"the path is longer than {MAX_PATH_LENGTH} characters"
    if len(parts) - 1 > MAX_FOLDER_DEPTH:
        return f"the path is more than {MAX_FOLDER_DEPTH} folders deep"
    return None


@dataclass(frozen=True)
class StagedFile:
    """A file in the staging folder that stands for a package."""

    path: Path
    target: str
    rel: str
    #: The central feed it came through (``staging/@central/<feed>/``), None when local.
    feed: str | None = None

    @property
    def slot(self) -> str:
        return f"{self.target}/{self.rel}"


@dataclass(frozen=True)
class Problem:
    """Something in the staging folder the operator should fix."""

    kind: str
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "message": self.message}


class Refused(Exception):
    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


@dataclass
class ScanResult:
    files: dict[str, StagedFile] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


class StagingFolder:
    """Paths in the staging folder: which stand for packages, and safe ways to read them."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        #: Whether a file (its stat) is or was one of the hub's own; the hub sets its
        #: store's record (``store.files.HubFiles``) here.
        self.is_hub_file: Callable[[os.stat_result], bool] = lambda st: False

    @property
    def real_root(self) -> Path:
        return Path(os.path.realpath(self.root))

    def is_inside(self, path: Path | str) -> bool:
        """Whether ``path``, with every symlink resolved, is in the staging folder."""
        real = os.path.realpath(path)
        root = str(self.real_root)
        return real == root or real.startswith(root + os.sep)

    def locate(self, path: Path | str) -> tuple[str | None, tuple[str, ...]] | None:
        """The central feed a path came through (None: local) and its parts from the
        target folder on; None when it is outside, or too shallow to name a file."""
        try:
            parts = Path(os.path.abspath(path)).relative_to(self.root).parts
        except ValueError:
            return None
        feed = None
        if parts and parts[0] == CENTRAL_SUBDIR:
            feed, parts = (parts[1], parts[2:]) if len(parts) > 1 else (None, ())
            if feed is None or is_ignored_name(feed):
                return None
        return (feed, parts) if len(parts) >= 2 else None

    def paths_for(self, slot: str) -> list[Path]:
        """Every file that could stand for ``slot``, the one that wins first: the local
        file, then each central feed's, narrowest feed first."""
        parts = slot.split("/")
        try:
            feeds = sorted((e.name for e in os.scandir(self.root / CENTRAL_SUBDIR)
                            if e.is_dir() and not is_ignored_name(e.name)),
                           key=lambda f: (feed_rank(f), f))
        except OSError:
            feeds = []
        return [self.root.joinpath(*parts),
                *(self.root.joinpath(CENTRAL_SUBDIR, f, *parts) for f in feeds)]

    def classify(self, path: Path | str) -> StagedFile | None:
        """The staged file ``path`` stands for; None for names that are never packages.

        Raises ``Refused`` for names the operator should hear about.
        """
        path = Path(os.path.abspath(path))
        located = self.locate(path)
        if located is None:
            return None
        feed, parts = located
        if any(is_ignored_name(p) for p in parts):
            return None
        target, rest = parts[0], parts[1:]
        rel = "/".join(rest)
        shown = f"{CENTRAL_SUBDIR}/{feed}/{target}/{rel}" if feed else f"{target}/{rel}"
        problem = target_problem(target)
        if problem:
            raise Refused(Problem("invalid_target", target if feed is None
                                  else f"{CENTRAL_SUBDIR}/{feed}/{target}", problem))
        problem = path_problem(rest)
        if problem:
            raise Refused(Problem("unsupported_name", shown, problem))
        if not self.is_inside(path):
            raise Refused(Problem("outside_staging", shown, OUTSIDE_MESSAGE))
        try:
            st = os.stat(path)
        except OSError:  # gone, or not a file: the caller finds out when it opens it
            return StagedFile(path, target, rel, feed)
        self.refuse_kind(st, shown)
        if feed is not None:
            winner = next((p for p in self.paths_for(f"{target}/{rel}") if p.is_file()),
                          path)
            if winner != path:
                raise Refused(Problem("shadowed", shown, (
                    f"{os.path.relpath(winner, self.root)} has the same target and path "
                    "and takes precedence (a site's own file over the centre's, a narrower "
                    "feed over a wider one)")))
        return StagedFile(path, target, rel, feed)

    def refuse_kind(self, st: os.stat_result, slot: str) -> None:
        """``Refused`` unless ``st`` is a regular file with one name that was never one of
        the hub's own files: a FIFO blocks whoever opens it, a hard link's other name may
        be the hub's data, and a file the hub wrote, then replaced, lives on under the
        staged name alone (the link count cannot tell)."""
        if not stat.S_ISREG(st.st_mode):
            raise Refused(Problem("not_regular_file", slot, NOT_REGULAR_MESSAGE))
        if st.st_nlink > 1:
            raise Refused(Problem("hardlink", slot, HARDLINK_MESSAGE))
        if self.is_hub_file(st):
            raise Refused(Problem("hub_file", slot, HUB_FILE_MESSAGE))

    def is_candidate(self, path: Path | str) -> bool:
        """Whether ``path``'s name alone could make it a package (cheap: for every event)."""
        located = self.locate(path)
        return located is not None and not any(is_ignored_name(p) for p in located[1])

    def slot_of(self, path: Path | str) -> str | None:
        """The slot a path would stand for, from its name alone (for files now gone)."""
        located = self.locate(path)
        return "/".join(located[1]) if located is not None else None

    def scan(self) -> ScanResult:
        """Every staged file and every problem, walking the whole folder once."""
        result = ScanResult()
        if not self.root.is_dir():
            return result
        seen_dirs: set[str] = set()
        for folder, dirs, files in os.walk(self.root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen_dirs:  # a symlink loop
                dirs[:] = []
                continue
            seen_dirs.add(real)
            for name in list(dirs):
                full = os.path.join(folder, name)
                if is_ignored_name(name):
                    dirs.remove(name)
                elif not self.is_inside(full):
                    dirs.remove(name)
                    rel = os.path.relpath(full, self.root)
                    result.problems.append(Problem(
                        "outside_staging", rel,
                        OUTSIDE_MESSAGE))
            for name in files:
                full = Path(folder) / name
                try:
                    staged = self.classify(full)
                except Refused as refused:
                    result.problems.append(refused.problem)
                    continue
                if staged is not None and full.is_file():
                    result.files[staged.slot] = staged
        if result.problems:
            result.problems = sorted(set(result.problems), key=lambda p: (p.path, p.kind))
        return result

    def open(self, staged: StagedFile) -> BinaryIO:
        """Open a staged file for reading, refusing it if what was opened is outside.

        The check is made on the opened descriptor (``/proc/self/fd``), so a symlink
        swapped in between the classification and the open cannot lead outside either.
        """
        # Never blocking: a FIFO swapped in after the classification opens at once here
        # (O_NONBLOCK) and is refused by its kind before anything reads it.
        fd = os.open(staged.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            opened = Path(f"/proc/self/fd/{fd}")
            if opened.exists() and not self.is_inside(os.readlink(opened)):
                raise Refused(Problem("outside_staging", staged.slot, OUTSIDE_MESSAGE))
            self.refuse_kind(os.fstat(fd), staged.slot)  # as opened, not as classified
            os.set_blocking(fd, True)
            return open(fd, "rb")  # noqa: SIM115 (returned to the caller)
        except BaseException:
            os.close(fd)
            raise


def remove_empty_folders(folder: Path, down_to: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``down_to`` while empty."""
    while folder != down_to and down_to in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (another file arrived), or gone: leave the rest
            return
        folder = folder.parent


def file_stamp(st: os.stat_result) -> dict[str, int]:
    """What tells a staged file's content may have changed, without reading it."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


class StagedFileChanged(Exception):
    """The file changed while it was being copied in; it must settle again."""


class Staging:
    """Takes staged files in as packages and keeps the packages equal to the folder."""

    def __init__(self, root: Path, catalog: PackageCatalog):
        self.folder = StagingFolder(root)
        self.catalog = catalog
        self._problems: dict[tuple[str, str], Problem] = {}
        self._warned: set[tuple[str, str]] = set()
        #: Guards the two above: the settle thread and requests both note problems.
        self._problems_lock = threading.Lock()
        #: Why a staged file's content cannot be taken in, or None; called with its
        #: target, its path below it, a ``read_at(offset, size)`` of its bytes and its
        #: size. The hub sets the firmware image check (firmware_images.py) here; private
        #: keys are refused before it, whatever the hub sets (``refused_content``).
        self.content_problem: Callable[[str, str, ReadAt, int], str | None] = \
            lambda target, rel, read_at, size: None
        #: The chunk size for a staged path (below its target), or None for the blob
        #: store's own; the hub gives firmware images theirs here.
        self.chunk_size_for: Callable[[str], int | None] = lambda rel: None

    @property
    def root(self) -> Path:
        return self.folder.root

    # -- taking files in ---------------------------------------------------------------
    def ingest_staged_file(self, path: Path | str, source: str = "folder") \
            -> tuple[Document | None, bool]:
        """Make the file at ``path`` the current version of its package.

        Returns the package (None for names that are never packages, refused ones and
        files gone meanwhile) and whether a new version was published. A file whose size,
        mtime and inode match what was last taken in is not read at all. Raises
        ``StagedFileChanged`` when the file changed while being copied.
        """
        try:
            staged = self.folder.classify(path)
            if staged is None:
                return None, False
            current = self.catalog.catalog.by_slot.get(staged.slot)
            if current is not None and current.get("staged") == file_stamp(staged.path.stat()):
                return dict(current), False  # not even opened: a read would be an event
            reader = self.folder.open(staged)
        except Refused as refused:
            self._note(refused.problem)
            return None, False
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None, False
        self._clear_problems(staged.slot)
        with reader:
            before = file_stamp(os.fstat(reader.fileno()))
            refused = self.refused_content(staged.target, staged.rel,
                                           read_at_of(reader.fileno()), before["size"])
            if refused:
                self._note(Problem("refused_content", staged.slot, refused))
                return None, False
            current = self.catalog.catalog.by_slot.get(staged.slot)
            if current is not None and current.get("staged") == before:
                return dict(current), False
            with self.catalog.changing():
                with timings.timed("ingest"):  # copy and hash: the part that grows with size
                    try:
                        blob = self.catalog.blobs.add_stream(reader,
                                                             self.chunk_size_for(staged.rel))
                    except StorageFull as full:  # shown in /health until it comes in
                        self._note(Problem("storage_full", staged.slot,
                                           f"{full.message}: not taken in yet; it is "
                                           "tried again at each rescan"))
                        raise
                if file_stamp(os.fstat(reader.fileno())) != before \
                        or blob.size != before["size"]:
                    self.catalog.drop_blob_if_unused(blob.sha256)
                    raise StagedFileChanged(staged.slot)
                return self.catalog.publish(staged.target, staged.rel, blob,
                                            source="central" if staged.feed else source,
                                            staged=before)

    def stage_stream(self, target: str, rel: str, stream: BinaryIO, *, source: str,
                     max_bytes: int, release: str | None = None) -> tuple[Document, bool]:
        """Put an uploaded file into the staging folder, then take it in like a dropped one.

        The bytes land under a temp name the watcher ignores and are renamed into place
        whole, so the watcher never sees half a file; the package is published before
        the rename, and the watcher's later look at the same file finds nothing new. A
        refusal (too large, empty, disk full) leaves nothing behind, not even the folders
        made for it.
        """
        problem = target_problem(target)
        parts = rel.split("/")
        if problem is None:
            problem = path_problem(parts)
        if problem is None and any(is_ignored_name(p) for p in parts):
            problem = "temp and hidden names (.x, x~, *.part, *.tmp, *.swp, *.crdownload) " \
                      "are ignored in staging"
        if problem:
            raise ValidationFailed(problem, {"target": target, "path": rel})
        destination = self.root.joinpath(target, *parts)
        self.root.mkdir(parents=True, exist_ok=True)
        existing = destination.parent
        while not os.path.lexists(existing):
            existing = existing.parent
        if not self.folder.is_inside(existing):  # never create folders through a link out
            raise Forbidden(f"{target}/{rel} leads outside the staging folder (a symlink)",
                            code="outside_staging")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Forbidden(f"cannot create the folder for {target}/{rel}: {exc.strerror}",
                            code="outside_staging") from None
        try:
            with AtomicFile(destination.parent, destination.name, mode=0o644) as incoming:
                while data := stream.read(COPY_BUFFER):
                    if incoming.size + len(data) > max_bytes:
                        raise PayloadTooLarge(f"a staged file may be at most {max_bytes} "
                                              "bytes (STAGING_UPLOAD_MAX_BYTES)")
                    incoming.write(data)
                if not incoming.size:
                    raise BadRequest("the body is empty: send the file's bytes (an empty "
                                     "file can still be dropped into the folder)",
                                     code="empty_body")
                with open(incoming.temp, "rb") as written:
                    refused = self.refused_content(target, rel,
                                                   read_at_of(written.fileno()),
                                                   incoming.size)
                if refused:
                    raise ValidationFailed(refused, {"target": target, "path": rel},
                                           code="refused_content")
                return self._publish_then_place(incoming, destination, target, rel, source,
                                                release)
        except BaseException:
            remove_empty_folders(destination.parent, down_to=existing)
            raise

    def refused_content(self, target: str, rel: str, read_at: ReadAt, size: int) \
            -> str | None:
        """Why a staged file's bytes cannot become a package, or None: a private key
        never can (whoever staged it meant to keep it, not to hand it to every node),
        then whatever the hub's ``content_problem`` says."""
        if looks_like_private_key(read_at(0, PRIVATE_KEY_SNIFF)):
            return ("a PEM private key: keys are never offered to devices (a signing key "
                    "stays on the machine that signs; the hub needs only its public key)")
        return self.content_problem(target, rel, read_at, size)

    def _publish_then_place(self, incoming: AtomicFile, destination: Path, target: str,
                            rel: str, source: str, release: str | None = None) \
            -> tuple[Document, bool]:
        """Take the bytes in from the temp file, and only then rename it into place.

        Everything that can fail for want of space (the blob copy, the package record)
        happens while the file is still a temp file, which leaving ``stage_stream``'s
        ``with`` deletes: a refused write (507) leaves nothing in the staging folder to
        become a package later. The rename keeps the inode and mtime, so the stamp
        recorded now is the placed file's, and the watcher's look at it reads nothing.
        """
        slot = f"{target}/{rel}"
        with self.catalog.changing():
            with open(incoming.temp, "rb") as reader, timings.timed("ingest"):
                stamp = file_stamp(os.fstat(reader.fileno()))
                blob = self.catalog.blobs.add_stream(reader, self.chunk_size_for(rel))
            try:
                package, changed = self.catalog.publish(target, rel, blob, source=source,
                                                        staged=stamp, release=release)
            except BaseException:
                self.catalog.drop_blob_if_unused(blob.sha256)
                raise
            try:
                incoming.commit(destination)
            except BaseException:
                # published but not placed: the folder is the desired state, so make the
                # packages match what the folder holds now
                if not destination.exists():
                    self.withdraw_missing(slot)
                raise
        self._clear_problems(slot)
        return package, changed

    # -- the folder as desired state ---------------------------------------------------
    def reconcile(self) -> list[StagedFile]:
        """Make the packages match the folder: withdraw packages whose file is gone, and
        return the files that are new or changed since they were taken in (to settle)."""
        if not self.root.is_dir():
            # an unmounted share or a deleted folder is not "operator wants nothing"
            self._note(Problem("staging_missing", ".",
                               "the staging folder is missing (unmounted?); packages are "
                               "kept until it is back"))
            return []
        scan = self.folder.scan()
        with self._problems_lock:
            self._problems = {(p.kind, p.path): p for p in scan.problems}
        for problem in scan.problems:
            self._warn_once(problem)
        for package in list(self.catalog.catalog.by_id.values()):
            if package["slot"] not in scan.files:
                self.withdraw_missing(package["slot"])
        waiting = []
        for slot, staged in scan.files.items():
            package = self.catalog.catalog.by_slot.get(slot)
            try:
                stamp = file_stamp(staged.path.stat())
            except OSError:
                continue
            if package is None or package.get("staged") != stamp:
                waiting.append(staged)
        return waiting

    def withdraw_missing(self, slot: str) -> Document | None:
        """Withdraw the package at ``slot`` if no staged file stands for it any more.

        When the file that won is gone but another stands for the same slot (a central
        feed's file a local one had shadowed), the package stays: the caller lets that
        file settle and it replaces the content, with no withdrawal in between.
        """
        with self.catalog.changing():  # a request may be withdrawing it right now
            package = self.catalog.catalog.by_slot.get(slot)
            if package is None:
                return None
            for path in self.folder.paths_for(slot):
                try:
                    if self.folder.classify(path) is not None and path.is_file():
                        return None
                except Refused:
                    pass  # shadowed, or now leads outside: not what the package stands for
            return self.catalog.withdraw(package["id"])

    def recheck(self, applies: Callable[[str], bool]) -> list[Document]:
        """Check the published packages whose path ``applies`` again, against today's
        rules, and withdraw those that are now refused (the staged file stays, with its
        problem shown): a hub started with ``FIRMWARE_SIGNING_KEYS`` for the first time
        must not go on offering the unsigned images it took in before."""
        withdrawn = []
        for slot, package in list(self.catalog.catalog.by_slot.items()):
            if not applies(package["path"]):
                continue
            with open(self.catalog.blobs.path_of(package["sha256"]), "rb") as blob:
                refused = self.refused_content(package["target"], package["path"],
                                               read_at_of(blob.fileno()),
                                               package["size"])
            if refused:
                self._note(Problem("refused_content", slot, refused))
                withdrawn.append(self.catalog.withdraw(package["id"]))
        return withdrawn

    def withdraw(self, package_id: str) -> Document:
        """Withdraw a package on request: its staged file is removed too, or the folder
        (the desired state) would bring it straight back. A package from the central
        office is withdrawn there: the site cannot delete from a receive-only folder."""
        with self.catalog.changing():
            package = self.catalog.get(package_id)
            path = self.root.joinpath(package["target"], *package["path"].split("/"))
            central = [p for p in self.folder.paths_for(package["slot"])[1:] if p.is_file()]
            if central and not path.is_file():
                raise Conflict(f"{package['slot']} comes from the central office "
                               f"({os.path.relpath(central[0], self.root)}): withdraw it "
                               "there, or stage a local file of the same target and path "
                               "to override it", code="central_package")
            if self.folder.is_inside(path.parent):
                path.unlink(missing_ok=True)
            if central:  # the local file overrode the centre's: that one takes over
                return self.catalog.catalog.by_slot[package["slot"]]
            return self.catalog.withdraw(package_id)

    # -- problems ----------------------------------------------------------------------
    def _note(self, problem: Problem) -> None:
        with self._problems_lock:
            self._problems[(problem.kind, problem.path)] = problem
        self._warn_once(problem)

    def _clear_problems(self, path: str) -> None:
        with self._problems_lock:
            for key in [k for k in self._problems if k[1] == path]:
                del self._problems[key]

    def _warn_once(self, problem: Problem) -> None:
        key = (problem.kind, problem.path)
        with self._problems_lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning("staging: %s: %s (%s)", problem.path, problem.message, problem.kind)

    def unknown_targets(self, devices: Iterable[Mapping[str, Any]]) -> list[Problem]:
        """Target folders that name no registered device and no group any device is in."""
        known = {ALL_TARGET}
        for device in devices:
            known.add(device["id"])
            known.update(GROUP_PREFIX + g for g in device.get("groups") or [])
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return []
        problems = []
        for entry in entries:
            if is_ignored_name(entry.name) or not entry.is_dir() \
                    or target_problem(entry.name) or entry.name in known:
                continue
            problems.append(Problem("unknown_target", entry.name,
                                    "no registered device or group has this name; its "
                                    "files wait here until one does"))
        return problems

    def report(self, devices: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """What health and the admin API say about the staging folder."""
        with self._problems_lock:
            problems = list(self._problems.values())
        problems += self.unknown_targets(devices)
        for problem in problems:
            self._warn_once(problem)
        return {
            "state": "problems" if problems else "ok",
            "staging_dir": str(self.root),
            "problems": [p.as_dict() for p in sorted(problems, key=lambda p: (p.path,
                                                                              p.kind))],
        }

