"""Files devices upload (logs, captures, dumps): streamed to disk, atomically, by safe name.

An upload is written to a hidden temp file while it arrives, a buffer at a time, and only
renamed to its name once the last byte is in and synced: a dropped connection or a body
over the size limit leaves nothing behind, and an upload under a name that already exists
replaces the old file whole. The SHA-256 is computed on the way in and answered, so the
device can check the hub got what it sent.

Names are one path component of plain ASCII (letters, digits, ``.``, ``_``, ``-``): no
``..``, no slash or backslash, no NUL, and no Unicode look-alikes such as the fullwidth
solidus (U+FF0F), the division slash (U+2215) or the one-dot leader (U+2024), which other
software may fold into ``/`` or ``.``. Anything else is refused, never "cleaned up".
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from werkzeug.sansio.multipart import Data, Epilogue, File, MultipartDecoder, NeedData

from ..clock import now_iso
from ..errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from ..fleet.devices import validate_device_id
from ..store import Document, Stores
from ..store.files import AtomicFile, remove_file

log = logging.getLogger(__name__)

SAFE_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
READ_BUFFER = 64 * 1024
#: Room for a multipart body's boundaries and part headers beside the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def validate_upload_name(name: str) -> str:
    """``name`` if it is a safe single file name, else a 400 saying what is allowed."""
    if not isinstance(name, str) or not SAFE_NAME_RE.fullmatch(name) or ".." in name:
        raise BadRequest("file names are 1-128 ASCII letters, digits, '.', '_' or '-', "
                         "not starting with '.' and without '..'", {"filename": repr(name)},
                         code="unsafe_filename")
    return name


def parse_allowed_types(text: str) -> frozenset[str] | None:
    """``UPLOAD_ALLOWED_TYPES`` as a set of lower-case extensions; None means any."""
    items = {part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()}
    return None if "*" in items else frozenset(items)


def upload_key(device_id: str, name: str) -> str:
    return f"{device_id}/{name}"


class DeviceUploads:
    def __init__(self, stores: Stores, root: Path, *, max_bytes: int, allowed_types: str):
        self.stores = stores
        self.root = root
        self.max_bytes = max_bytes
        self.allowed = parse_allowed_types(allowed_types)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_of(self, device_id: str, name: str) -> Path:
        return self.root / validate_device_id(device_id) / validate_upload_name(name)

    def check_type(self, name: str) -> None:
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if self.allowed is not None and extension not in self.allowed:
            allowed = ", ".join(sorted(self.allowed))
            raise UnsupportedMediaType(f"files of type {extension or '(none)'!r} are not "
                                       f"accepted; allowed: {allowed} (UPLOAD_ALLOWED_TYPES)",
                                       code="file_type_not_allowed")

    # -- receiving ---------------------------------------------------------------------
    def receive(self, device_id: str, name: str, pieces: Iterable[bytes],
                expected_size: int | None = None) -> Document:
        """Store an upload arriving as ``pieces`` under ``name``; answer its record.

        With ``expected_size`` (the request's Content-Length), fewer bytes mean the
        connection dropped: nothing is stored.
        """
        path = self.path_of(device_id, name)
        self.check_type(name)
        digest = hashlib.sha256()
        with AtomicFile(path.parent, name) as incoming:
            for piece in pieces:
                if incoming.size + len(piece) > self.max_bytes:
                    raise PayloadTooLarge(f"an upload may be at most {self.max_bytes} bytes "
                                          "(UPLOAD_MAX_BYTES)")
                digest.update(piece)
                incoming.write(piece)
            if expected_size is not None and incoming.size != expected_size:
                raise BadRequest(f"the upload ended after {incoming.size} of "
                                 f"{expected_size} bytes; nothing was stored",
                                 code="incomplete_upload")
            incoming.commit(path)
        record = {"id": upload_key(device_id, name), "device_id": device_id, "name": name,
                  "size": incoming.size, "sha256": digest.hexdigest(),
                  "uploaded_at": now_iso()}
        stored = self.stores.uploads.upsert(record)
        log.info("upload from %s: %s (%d bytes)", device_id, name, record["size"])
        return stored

    def receive_multipart(self, device_id: str, read: Callable[[int], bytes],
                          boundary: bytes) -> Document:
        """Store the one file part of a ``multipart/form-data`` body, streamed.

        Other (form field) parts are skipped; a body with no file part, or more than one,
        is refused.
        """
        parts = multipart_file_parts(read, boundary)
        try:
            filename, pieces = next(parts)
        except StopIteration:
            raise BadRequest("the form has no file part; send the file as field 'file'",
                             code="no_file") from None

        def then_no_more_files() -> Iterator[bytes]:
            # Checked before the file is committed: a refused upload must not have
            # replaced the device's earlier file of the same name.
            yield from pieces
            if next(parts, None) is not None:
                raise BadRequest("send one file per upload", code="too_many_files")

        return self.receive(device_id, filename, then_no_more_files())

    # -- reading and deleting ----------------------------------------------------------
    def list(self, device_id: str | None = None) -> list[Document]:
        found = [u for u in self.stores.uploads.all()
                 if device_id is None or u["device_id"] == device_id]
        return sorted(found, key=lambda u: (u["device_id"], u["name"]))

    def get(self, device_id: str, name: str) -> tuple[Document, Path]:
        path = self.path_of(device_id, name)
        record = self.stores.uploads.get(upload_key(device_id, name))
        if not path.is_file():
            raise NotFound(f"upload {name!r} of {device_id} is missing from disk")
        return record, path

    def delete(self, device_id: str, name: str) -> Document:
        path = self.path_of(device_id, name)
        record = self.stores.uploads.delete(upload_key(device_id, name))
        remove_file(path)
        return record

    def forget_missing_files(self) -> list[str]:
        """Drop records whose file is gone (a crash between unlinking and recording);
        files are renamed into place before their record, so no record is ever early."""
        dropped = []
        for record in self.stores.uploads.all():
            if not (self.root / record["device_id"] / record["name"]).is_file():
                self.stores.uploads.delete(record["id"])
                dropped.append(record["id"])
        return dropped


def multipart_file_parts(read: Callable[[int], bytes], boundary: bytes) \
        -> Iterator[tuple[str, Iterator[bytes]]]:
    """The file parts of a multipart body read with ``read``: (filename, its bytes).

    werkzeug's sans-IO decoder parses the body a buffer at a time, so a file part is never
    held whole in memory (werkzeug's form parser would spool it to a temp file first, and
    the hub would then copy it again). Each part's bytes must be consumed before the next
    part is asked for.
    """
    # The decoder holds back the bytes after a file part's last line break (they may
    # start the boundary) and refuses a read that would take its buffer past its limit:
    # a limit of one read's size refused any binary file past 64 KiB.
    decoder = MultipartDecoder(boundary, max_form_memory_size=MULTIPART_OVERHEAD + READ_BUFFER)
    state: dict[str, Any] = {"event": None, "done": False}

    def next_event():
        # Called from the file part's own generator too, so the decoder's complaints
        # (a ValueError for a malformed or cut-off body) are translated here, where
        # every read passes: a truncated upload is a 400, never a 500.
        while True:
            try:
                event = decoder.next_event()
            except ValueError as exc:
                raise BadRequest(f"the multipart body is malformed: {exc}",
                                 code="invalid_multipart") from None
            if not isinstance(event, NeedData):
                return event
            if state["done"]:
                raise BadRequest("the multipart body ended early", code="invalid_multipart")
            data = read(READ_BUFFER)
            decoder.receive_data(data or None)
            state["done"] = not data

    def file_bytes() -> Iterator[bytes]:
        while True:
            event = next_event()
            if not isinstance(event, Data):
                state["event"] = event
                return
            if event.data:
                yield event.data
            if not event.more_data:
                return

    while True:
        event = state["event"] or next_event()
        state["event"] = None
        if isinstance(event, Epilogue):
            return
        if isinstance(event, File):
            if "\\" in event.headers.get("Content-Disposition", ""):
                # quoted-string unescaping would turn "a\b" into "ab": refuse instead
                raise BadRequest("file names may not contain backslashes",
                                 code="unsafe_filename")
            yield event.filename or "", file_bytes()

