"""Liveness (last seen, signal, heap, ...) kept in memory and checkpointed.

Every heartbeat changes these fields; fsyncing each one would wear out a Pi's SD card for
data that is stale within seconds anyway. The table is written atomically every
``interval_s`` seconds when something changed, and once more at shutdown, so a power cut
costs at most one interval of liveness, never a corrupt file.
"""

from __future__ import annotations

import json
import threading
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

    def _encode(self) -> dict[str, Any]:
        """What a checkpoint writes; called with the lock held."""
        return self._entries

    def checkpoint(self) -> bool:
        """Write the table if it changed since the last checkpoint; True when it wrote."""
        with self._lock:
            if not self._dirty:
                return False
            payload = json.dumps(self._encode(), separators=(",", ":")).encode()
            self._dirty = False
        try:
            write_atomically(self.path, payload)
        except Exception:
            with self._lock:
                self._dirty = True
            raise
        return True

    def start(self) -> None:
        """Checkpoint in the background until ``stop()``."""
        self._checkpoints.start()

    def stop(self) -> None:
        self._checkpoints.stop()
        self.checkpoint()
