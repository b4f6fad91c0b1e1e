"""Content-addressed blob store: the bytes of every package, named by their SHA-256.

A staged file is copied in once, on first sight. Copying (rather than serving the staged
file itself) means an operator editing or deleting the file in staging can never change
the bytes a device is half-way through downloading. While the bytes stream in, the hub
computes everything a download will need, once: the SHA-256 (the blob's name), the MD5
(the ESP8266 ``Update`` class checks an ``x-MD5`` header) and the SHA-256 of every chunk.
Serving a chunk then costs a table lookup, never a hash.

Layout below the store's folder::

    ab/abcdef...            the bytes (named by their SHA-256)
    ab/abcdef....4096.json  size, md5 and chunk hashes for a chunk size of 4096

Identical content is stored once. Blobs no package refers to any more are removed by
``remove_unreferenced``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import NotFound
from ..store.files import AtomicFile, remove_file, write_atomically

log = logging.getLogger(__name__)

#: Bytes read from a source per step while hashing and copying.
COPY_BUFFER = 1024 * 1024
#: Chunk-hash tables kept in memory (a 50 MiB blob in 4 KiB chunks holds 12,800 hashes).
CACHED_TABLES = 64
#: Blob files kept open for chunk reads, so a chunk is one ``pread`` (no open, no close).
OPEN_BLOBS = 64
SHA256_HEX_LENGTH = 64


@dataclass(frozen=True)
class BlobInfo:
    """What a download needs to know about a blob, computed once at ingest."""

    sha256: str
    md5: str
    size: int
    chunk_size: int
    #: SHA-256 of each chunk, as raw 32-byte digests back to back.
    chunk_digests: bytes

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_digests) // 32

    def chunk_sha256(self, index: int) -> str:
        if not 0 <= index < self.chunk_count:
            raise NotFound(f"chunk {index} does not exist; this file has {self.chunk_count} "
                           f"chunk(s) of {self.chunk_size} bytes", code="no_such_chunk")
        return self.chunk_digests[index * 32:(index + 1) * 32].hex()

    def chunk_span(self, index: int) -> tuple[int, int]:
        """Offset and length of chunk ``index`` (the last one may be short)."""
        self.chunk_sha256(index)  # range check
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)


class BlobHasher:
    """Hashes a byte stream the way a download will check it: whole, MD5 and per chunk."""

    def __init__(self, chunk_size: int):
        self.chunk_size = chunk_size
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0
        self._chunk = hashlib.sha256()
        self._chunk_filled = 0
        self._digests = bytearray()

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.md5.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.chunk_size - self._chunk_filled)
            self._chunk.update(view[:take])
            self._chunk_filled += take
            view = view[take:]
            if self._chunk_filled == self.chunk_size:
                self._digests += self._chunk.digest()
                self._chunk = hashlib.sha256()
                self._chunk_filled = 0

    def info(self) -> BlobInfo:
        digests = bytes(self._digests)
        if self._chunk_filled or self.size == 0:  # a short last chunk; an empty file is one
            digests += self._chunk.digest()
        return BlobInfo(sha256=self.sha256.hexdigest(), md5=self.md5.hexdigest(),
                        size=self.size, chunk_size=self.chunk_size, chunk_digests=digests)


class BlobStore:
    def __init__(self, root: Path, chunk_size: int):
        self.root = root
        self.chunk_size = chunk_size
        # Group-readable, so nginx (in the hub's group) can send blobs via X-Accel-Redirect.
        root.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._lock = threading.Lock()
        self._tables: OrderedDict[tuple[str, int], BlobInfo] = OrderedDict()
        self._open: OrderedDict[str, _OpenBlob] = OrderedDict()

    # -- paths -------------------------------------------------------------------------
    def path_of(self, sha256: str) -> Path:
        if len(sha256) != SHA256_HEX_LENGTH or not all(c in "0123456789abcdef" for c in sha256):
            raise NotFound(f"no blob named {sha256!r}")
        return self.root / sha256[:2] / sha256

    def _table_path(self, sha256: str, chunk_size: int) -> Path:
        return self.path_of(sha256).with_name(f"{sha256}.{chunk_size}.json")

    def __contains__(self, sha256: str) -> bool:
        try:
            return self.path_of(sha256).is_file()
        except NotFound:
            return False

    # -- writes ------------------------------------------------------------------------
    def add_stream(self, source: BinaryIO, chunk_size: int | None = None) -> BlobInfo:
        """Copy ``source`` to its end into the store and return what downloads need.

        The bytes are hashed as they are copied, so the source is read exactly once. When
        the store already holds the same content, the copy is dropped and the stored blob
        is kept (its chunk table too, if it has one for this chunk size).
        """
        hasher = BlobHasher(chunk_size or self.chunk_size)
        with AtomicFile(self.root, "incoming", mode=0o640) as incoming:
            while data := source.read(COPY_BUFFER):
                hasher.update(data)
                incoming.write(data)
            info = hasher.info()
            final = self.path_of(info.sha256)
            if final.is_file() and final.stat().st_size == info.size:
                incoming.discard()
            else:
                incoming.commit(final)
        self._save_table(info)
        return info

    def _save_table(self, info: BlobInfo) -> None:
        path = self._table_path(info.sha256, info.chunk_size)
        if not path.is_file():
            table = {"sha256": info.sha256, "md5": info.md5, "size": info.size,
                     "chunk_size": info.chunk_size, "chunks": info.chunk_digests.hex()}
            write_atomically(path, json.dumps(table, separators=(",", ":")).encode())
        with self._lock:
            self._remember(info)

    def remove(self, sha256: str) -> None:
        """Delete a blob and its chunk tables."""
        blob = self.path_of(sha256)
        with self._lock:
            for key in [k for k in self._tables if k[0] == sha256]:
                del self._tables[key]
            self._open.pop(sha256, None)  # closed once no read holds it
        for path in blob.parent.glob(f"{sha256}*"):
            remove_file(path)
        try:
            blob.parent.rmdir()
        except OSError:
            pass  # other blobs share the folder

    def remove_unreferenced(self, referenced: Iterable[str]) -> list[str]:
        """Delete every blob whose SHA-256 is not in ``referenced``; return their names.

        The caller must make sure no blob is being added meanwhile (the package catalog
        runs this under the same lock as its ingests).
        """
        keep = set(referenced)
        removed = []
        for blob in self.root.glob("??/*"):
            name = blob.name
            if len(name) == SHA256_HEX_LENGTH and "." not in name and name not in keep:
                self.remove(name)
                removed.append(name)
        for table in self.root.glob("??/*.json"):  # tables whose blob is gone
            if not table.with_name(table.name.split(".")[0]).exists():
                remove_file(table)
        if removed:
            log.info("removed %d blob(s) no package refers to", len(removed))
        return removed

    # -- reads -------------------------------------------------------------------------
    def info(self, sha256: str, chunk_size: int) -> BlobInfo:
        """The blob's hashes for ``chunk_size``: from memory, else its table on disk.

        A missing or unreadable table (a crash between writing the blob and its table)
        is rebuilt from the blob once.
        """
        key = (sha256, chunk_size)
        with self._lock:
            cached = self._tables.get(key)
            if cached is not None:
                self._tables.move_to_end(key)
                return cached
        info = self._load_table(sha256, chunk_size)
        if info is None:
            blob = self.path_of(sha256)
            try:
                with open(blob, "rb") as source:
                    hasher = BlobHasher(chunk_size)
                    while data := source.read(COPY_BUFFER):
                        hasher.update(data)
            except FileNotFoundError:
                raise NotFound(f"blob {sha256} is not in the store") from None
            info = hasher.info()
            if info.sha256 != sha256:
                raise NotFound(f"blob {sha256} is damaged (its content hashes to "
                               f"{info.sha256})", code="blob_damaged")
            self._save_table(info)
            return info
        with self._lock:
            self._remember(info)
        return info

    def _load_table(self, sha256: str, chunk_size: int) -> BlobInfo | None:
        try:
            table = json.loads(self._table_path(sha256, chunk_size).read_bytes())
            return BlobInfo(sha256=table["sha256"], md5=table["md5"], size=table["size"],
                            chunk_size=table["chunk_size"],
                            chunk_digests=bytes.fromhex(table["chunks"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _remember(self, info: BlobInfo) -> None:
        self._tables[(info.sha256, info.chunk_size)] = info
        self._tables.move_to_end((info.sha256, info.chunk_size))
        while len(self._tables) > CACHED_TABLES:
            self._tables.popitem(last=False)

    def read_chunk(self, info: BlobInfo, index: int) -> bytes:
        """The bytes of one chunk, read with a single ``pread`` of a kept-open file."""
        offset, length = info.chunk_span(index)
        blob = self._opened(info.sha256)  # held here, so it stays open for the read
        return os.pread(blob.fd, length, offset)

    def _opened(self, sha256: str) -> _OpenBlob:
        with self._lock:
            blob = self._open.get(sha256)
            if blob is not None:
                self._open.move_to_end(sha256)
                return blob
        blob = _OpenBlob(self.path_of(sha256))
        with self._lock:
            blob = self._open.setdefault(sha256, blob)
            while len(self._open) > OPEN_BLOBS:
                self._open.popitem(last=False)  # closed once no read holds it
        return blob


class _OpenBlob:
    """A read-only descriptor closed when the last reference goes: a read in flight keeps
    its blob open even if the blob is evicted or removed meanwhile (never a reused fd)."""

    __slots__ = ("fd",)

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def __del__(self) -> None:
        os.close(self.fd)
