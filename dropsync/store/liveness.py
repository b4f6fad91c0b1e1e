"""Liveness (last seen, signal, heap, ...) kept in memory and checkpointed.

Every heartbeat changes these fields; fsyncing each one would wear out a Pi's SD card for
data that is stale within seconds anyway. The table is written atomically every
``interval_s`` seconds when something changed, and once more at shutdown, so a power cut
costs at most one interval of liveness, never a corrupt file.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .files import write_atomically
from .periodic import Periodic
from .tables import AtomicJSONStorage


class LivenessTable:
    def __init__(self, path: Path, interval_s: float = 5.0):
        self.path = path
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = \
            self._decode(AtomicJSONStorage(path).read() or {})
        self._dirty = False
        self._checkpoints = Periodic("liveness-checkpoint", interval_s, self.checkpoint)

    def update(self, device_id: str, **fields: Any) -> None:
        with self._lock:
            self._entries.setdefault(device_id, {}).update(fields)
            self._dirty = True

    def get(self, device_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._entries.get(device_id, {}))

    def forget(self, device_id: str) -> None:
        with self._lock:
            if self._entries.pop(device_id, None) is not None:
                self._dirty = True

    def _decode(self, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The entries in a checkpoint file (subclasses may keep more beside them)."""
        return data

    def _wrapper(self) -> Callable[[str], str]:
        """What a checkpoint writes around the entries' JSON object, as things stand when
        it starts; called with the lock held."""
        return lambda entries_json: entries_json

    def checkpoint(self) -> bool:
        """Write the table if it changed since the last checkpoint; True when it wrote."""
        with self._lock:
            if not self._dirty:
                return False
            self._dirty = False
            keys, wrap = list(self._entries), self._wrapper()
        payload = wrap(encode_in_slices(self._lock, keys, self._entries.get)).encode()
        write_or_retry_later(self.path, payload, self._lock,
                             lambda: setattr(self, "_dirty", True))
        return True

    def start(self) -> None:
        """Checkpoint in the background until ``stop()``."""
        self._checkpoints.start()

    def stop(self) -> None:
        self._checkpoints.stop()
        self.checkpoint()


def write_or_retry_later(path: Path, payload: bytes, lock: threading.Lock,
                         mark_unwritten: Callable[[], None]) -> None:
    """Write a checkpoint; if it fails, mark it unwritten (under ``lock``) so the next
    checkpoint writes it, and raise."""
    try:
        write_atomically(path, payload)
    except Exception:
        with lock:
            mark_unwritten()
        raise


#: Entries encoded at a time by a checkpoint, lock held; between slices the lock and the
#: GIL are let go. Encoding 10,000 devices' liveness at once held both for 60-130 ms,
#: and every poll on the event loop waited that long.
SLICE = 250


def encode_in_slices(lock: threading.Lock, keys: Iterable[str],
                     value_of: Callable[[str], Any], slice_size: int = SLICE) -> str:
    """A JSON object of ``keys`` and their values, encoded a slice at a time under
    ``lock``: each slice is as it was at one moment, and no caller waits for all."""
    keys = list(keys)
    parts = []
    for start in range(0, len(keys), slice_size):
        with lock:
            piece: Mapping[str, Any] = {key: value for key in keys[start:start + slice_size]
                                        if (value := value_of(key)) is not None}
            text = json.dumps(piece, separators=(",", ":"))
        if len(text) > 2:
            parts.append(text[1:-1])
        time.sleep(0)  # lets the event loop's thread take the GIL between slices
    return "{" + ",".join(parts) + "}"
