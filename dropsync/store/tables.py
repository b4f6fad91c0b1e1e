"""TinyDB tables for hot, small state (devices, credentials, settings).

TinyDB's own JSONStorage re-parses the file on every read and rewrites it in place, so a
crash mid-write can leave half a file. ``AtomicJSONStorage`` keeps the parsed data in memory
and replaces the file atomically on every write. ``KeyedTable`` adds what the hub needs on
top: lookups by a natural key (and unique secondary keys) from an in-memory index, one lock
around every read-modify-write, copies out so callers never alias stored data, and a miss
that raises ``NotFound`` instead of returning None.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from ..errors import Conflict, NotFound, StoreCorrupt
from .files import write_atomically

Document = dict[str, Any]


def detached(doc: Mapping[str, Any]) -> Document:
    """A plain-dict deep copy: callers never alias stored data or see TinyDB's types.

    Documents are JSON trees, so a walk of dicts and lists copies them; it is several
    times faster than ``copy.deepcopy``, and every authenticated request pays for one.
    The walk keeps its own stack instead of recursing: whatever was ever stored, however
    deeply nested, copies (a recursive copy of a command's 490-level ``args`` once made
    the store unloadable at start).
    """
    copy: Document = {}
    pending: list[tuple[Mapping[str, Any] | list, dict | list]] = [(doc, copy)]
    while pending:
        source, target = pending.pop()
        items = source.items() if isinstance(source, Mapping) else enumerate(source)
        for key, value in items:
            if isinstance(value, dict):
                value_copy: Any = {}
                pending.append((value, value_copy))
            elif isinstance(value, list):
                value_copy = []
                pending.append((value, value_copy))
            else:
                value_copy = value
            if isinstance(target, dict):
                target[key] = value_copy
            else:
                target.append(value_copy)
    return copy


class AtomicJSONStorage(Storage):
    """A TinyDB storage that reads from memory and writes whole files atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._data = self._load()

    def _load(self) -> dict | None:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StoreCorrupt(self.path, f"not valid JSON: {exc}") from None
        except RecursionError:  # the hub never writes this deep; something else did
            raise StoreCorrupt(self.path, "nested too deeply to parse") from None
        if not isinstance(data, dict):
            raise StoreCorrupt(self.path, "top level is not a JSON object")
        return data

    def read(self) -> dict | None:
        return self._data

    def write(self, data: dict) -> None:
        try:
            payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
            write_atomically(self.path, payload)
        except BaseException:
            # TinyDB mutated the dict read() handed out before calling us; put memory back
            # to what is on disk so a failed write leaves no phantom change behind.
            self._data = self._load()
            raise
        self._data = data


class TableFile:
    """One JSON file holding one or more tables, with the lock its writes share."""

    def __init__(self, path: Path):
        self.lock = threading.RLock()
        self.db = TinyDB(storage=AtomicJSONStorage, path=path)
        self.path = path

    def close(self) -> None:
        with self.lock:
            self.db.close()


class KeyedTable:
    """A TinyDB table of documents identified by ``key_field``."""

    def __init__(self, file: TableFile, name: str, key_field: str, unique: Iterable[str] = (),
                 *, item: str | None = None):
        self.name = name
        #: What one document is called in messages ("device", "operator").
        self.item = item or name
        self.key_field = key_field
        self.unique_fields = tuple(unique)
        self.lock = file.lock
        self._table = file.db.table(name, cache_size=0)
        self._doc_ids: dict[str, int] = {}
        self._unique: dict[str, dict[Any, str]] = {f: {} for f in self.unique_fields}
        for doc in self._table.all():
            self._index(doc[key_field], doc.doc_id, doc)

    # -- reads -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._doc_ids)

    def __contains__(self, key: str) -> bool:
        return key in self._doc_ids

    def get(self, key: str) -> Document:
        with self.lock:
            return detached(self._raw(key))

    def get_by(self, field: str, value: Any) -> Document:
        """Look a document up by one of its unique fields."""
        with self.lock:
            key = self._unique[field].get(value)
            if key is None:
                raise NotFound(f"no {self.item} with that {field}")
            return detached(self._raw(key))

    def all(self) -> list[Document]:
        with self.lock:
            return [detached(doc) for doc in self._table.all()]

    # -- writes ------------------------------------------------------------------------
    def insert(self, doc: Mapping[str, Any]) -> Document:
        with self.lock:
            key = doc[self.key_field]
            if key in self._doc_ids:
                raise Conflict(f"{self.item} {key!r} already exists", code="already_exists")
            self._check_unique(key, doc)
            stored = detached(doc)
            doc_id = self._table.insert(stored)
            self._index(key, doc_id, stored)
            return detached(stored)

    def insert_many(self, docs: Iterable[Mapping[str, Any]]) -> list[Document]:
        """Insert new documents in one write, all or none (a fleet's import wrote the
        whole file once per device)."""
        with self.lock:
            stored = [detached(doc) for doc in docs]
            keys = [doc[self.key_field] for doc in stored]
            taken = [key for key in keys if key in self._doc_ids]
            if taken or len(set(keys)) < len(keys):
                raise Conflict(f"{self.item} {(taken or keys)[0]!r} already exists",
                               code="already_exists")
            for field in self.unique_fields:
                values = [doc[field] for doc in stored if doc.get(field) is not None]
                if len(set(values)) < len(values):
                    raise Conflict(f"two new {self.item}s have the same {field}")
            for key, doc in zip(keys, stored, strict=True):
                self._check_unique(key, doc)
            doc_ids = self._table.insert_multiple(stored)
            for key, doc_id, doc in zip(keys, doc_ids, stored, strict=True):
                self._index(key, doc_id, doc)
            return [detached(doc) for doc in stored]

    def update(
        self, key: str, changes: Mapping[str, Any] | Callable[[Document], Mapping[str, Any]]
    ) -> Document:
        """Apply ``changes`` (or ``changes(current)``) to one document, atomically."""
        with self.lock:
            current = self._raw(key)
            fields = dict(changes(detached(current)) if callable(changes) else changes)
            if fields.get(self.key_field, key) != key:
                raise Conflict(f"the {self.key_field} of a {self.item} cannot change")
            self._check_unique(key, {**current, **fields})
            old = detached(current)
            self._table.update(detached(fields), doc_ids=[self._doc_ids[key]])
            self._unindex(key, old)
            updated = self._raw(key)
            self._index(key, self._doc_ids[key], updated)
            return detached(updated)

    def delete(self, key: str) -> Document:
        with self.lock:
            old = detached(self._raw(key))
            self._table.remove(doc_ids=[self._doc_ids[key]])
            self._unindex(key, old)
            del self._doc_ids[key]
            return old

    def upsert(self, doc: Mapping[str, Any]) -> Document:
        """Insert ``doc``, or update the document with its key; one lock for both."""
        with self.lock:
            key = doc[self.key_field]
            return self.update(key, doc) if key in self._doc_ids else self.insert(doc)

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove several documents in one write; keys already gone are skipped."""
        with self.lock:
            present = [key for key in keys if key in self._doc_ids]
            if not present:
                return 0
            old = {key: detached(self._raw(key)) for key in present}
            self._table.remove(doc_ids=[self._doc_ids[key] for key in present])
            for key in present:
                self._unindex(key, old[key])
                del self._doc_ids[key]
            return len(present)

    # -- internals ---------------------------------------------------------------------
    def _raw(self, key: str) -> Document:
        doc_id = self._doc_ids.get(key)
        doc = self._table.get(doc_id=doc_id) if doc_id is not None else None
        if doc is None:
            raise NotFound(f"{self.item} {key!r} not found")
        return doc

    def _check_unique(self, key: str, doc: Mapping[str, Any]) -> None:
        for field in self.unique_fields:
            owner = self._unique[field].get(doc.get(field))
            if owner is not None and owner != key:
                raise Conflict(f"another {self.item} has the same {field}")

    def _index(self, key: str, doc_id: int, doc: Mapping[str, Any]) -> None:
        self._doc_ids[key] = doc_id
        for field in self.unique_fields:
            if doc.get(field) is not None:
                self._unique[field][doc[field]] = key

    def _unindex(self, key: str, doc: Mapping[str, Any]) -> None:
        for field in self.unique_fields:
            if self._unique[field].get(doc.get(field)) == key:
                del self._unique[field][doc[field]]
