"""Where each device stands with each package: the latest sync report per pair.

Devices report progress often (downloading, verified, applied, failed). Every report is
appended to the ``sync`` history stream first, so it is durable at the cost of one
fdatasync that does not grow with history. The latest report per (device, package) is
then kept in memory, where per-package progress is counted, and checkpointed like
liveness: rewriting a table of thousands of pairs on every report would wear out an SD card
for nothing. A crash loses no report: at start the checkpoint is loaded and the history
records newer than it are replayed on top.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .history import HistoryLog
from .liveness import LivenessTable

Report = dict[str, Any]


def pair_key(device_id: str, package_id: str) -> str:
    return f"{device_id}/{package_id}"


class SyncStateTable(LivenessTable):
    def __init__(self, path: Path, history: HistoryLog, interval_s: float = 5.0):
        super().__init__(path, interval_s)
        self.history = history
        self._record_lock = threading.Lock()
        self._replay_newer_history()

    def _decode(self, data: dict[str, Any]) -> dict[str, Report]:
        # The checkpoint keeps the last applied seq beside the pairs: withdrawing a package
        # forgets pairs, and the highest seq among those left would replay them at start.
        if "pairs" in data:
            self._applied_seq = data.get("applied_seq", 0)
            return data["pairs"]
        self._applied_seq = max((e.get("seq", 0) for e in data.values()), default=0)
        return data

    def _wrapper(self) -> Callable[[str], str]:
        # The seq as the checkpoint starts: a report applied while it encodes has a later
        # seq, so a start from this checkpoint replays it even if its pair was encoded
        # before it.
        applied = int(self._applied_seq)
        return lambda pairs_json: f'{{"applied_seq":{applied},"pairs":{pairs_json}}}'

    def _replay_newer_history(self) -> None:
        for record in self.history.find(after_seq=self._applied_seq, newest_first=False):
            self._apply(record)

    def record(self, report: Report) -> Report:
        """Store a report durably (history), then make it the pair's latest state."""
        with self._record_lock:  # memory follows history order
            entry = self.history.append(report)
            self._apply(entry)
            return entry

    def _apply(self, entry: Report) -> None:
        with self._lock:
            self._entries[pair_key(entry["device_id"], entry["package_id"])] = dict(entry)
            self._applied_seq = max(self._applied_seq, entry["seq"])
            self._dirty = True

    def forget_package(self, package_id: str) -> None:
        """Drop a withdrawn package's pairs from the current state (its history stays)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e["package_id"] == package_id]:
                del self._entries[key]
                self._dirty = True

    def by_package(self) -> dict[str, dict[str, Report]]:
        """Latest report of every device, grouped by package id."""
        grouped: dict[str, dict[str, Report]] = defaultdict(dict)
        with self._lock:
            for entry in self._entries.values():
                grouped[entry["package_id"]][entry["device_id"]] = dict(entry)
        return grouped
