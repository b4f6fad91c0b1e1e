"""Each device's RSSI and free heap over the last 24 hours, for the dashboard's charts.

Heartbeats arrive every few seconds per device; keeping them all would grow without bound
and writing each would wear out an SD card. So the series is downsampled as it arrives:
one point per ``bucket_s`` (the mean of the heartbeats in it), at most 24 hours of points
per device, kept in compact arrays in memory (a full day at the default five-minute buckets
is under 4 KiB a device). It is checkpointed like liveness, atomically and only when a
bucket has closed since the last write (so at most once a bucket, never once a
heartbeat), and once more at shutdown: a power cut loses at most the buckets since then.
"""

from __future__ import annotations

import json
import math
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from .liveness import encode_in_slices, write_or_retry_later
from .periodic import Periodic
from .tables import AtomicJSONStorage

DAY_S = 86_400
#: Never more points than this per device, whatever the bucket width.
MAX_POINTS = 1_440
#: Stored for a metric a heartbeat did not report.
MISSING = -(2**31)


class Series:
    """One device's closed buckets (start, mean RSSI, mean free heap) and the open one."""

    __slots__ = ("starts", "rssi", "heap", "open_start", "sums", "counts")

    def __init__(self) -> None:
        self.starts = array("q")
        self.rssi = array("i")
        self.heap = array("i")
        self.open_start: int | None = None
        self.sums = [0.0, 0.0]
        self.counts = [0, 0]

    def open_means(self) -> list[int]:
        return [round(s / n) if n else MISSING
                for s, n in zip(self.sums, self.counts, strict=True)]

    def close_bucket(self) -> None:
        if self.open_start is None:
            return
        means = self.open_means()
        if self.starts and self.starts[-1] == self.open_start:  # reopened after a restart
            self.rssi[-1], self.heap[-1] = means
        else:
            self.starts.append(self.open_start)
            self.rssi.append(means[0])
            self.heap.append(means[1])
        self.open_start, self.sums, self.counts = None, [0.0, 0.0], [0, 0]

    def trim(self, oldest: int, max_points: int) -> None:
        cut = 0
        while cut < len(self.starts) and (self.starts[cut] < oldest
                                          or len(self.starts) - cut > max_points):
            cut += 1
        if cut:
            for column in (self.starts, self.rssi, self.heap):
                del column[:cut]


class HealthSeries:
    def __init__(self, path: Path, bucket_s: int = 300, interval_s: float = 5.0):
        self.path = path
        self.bucket_s = max(1, int(bucket_s))
        self.max_points = min(MAX_POINTS, math.ceil(DAY_S / self.bucket_s))
        self._lock = threading.Lock()
        self._series: dict[str, Series] = {}
        self._closed_since_checkpoint = False
        self._load(AtomicJSONStorage(path).read() or {})
        self._checkpoints = Periodic("health-checkpoint", interval_s, self.checkpoint)

    # -- writes --------------------------------------------------------------------------
    def record(self, device_id: str, rssi: Any = None, free_heap: Any = None,
               now: float | None = None) -> None:
        """Add one heartbeat's readings to the device's current bucket (memory only)."""
        values = [v if isinstance(v, int | float) and not isinstance(v, bool) else None
                  for v in (rssi, free_heap)]
        if values == [None, None]:
            return
        now = time.time() if now is None else now
        start = int(now // self.bucket_s * self.bucket_s)
        with self._lock:
            series = self._series.get(device_id)
            if series is None:
                series = self._series[device_id] = Series()
            if series.open_start is not None and series.open_start != start:
                series.close_bucket()
                series.trim(start - DAY_S, self.max_points)
                self._closed_since_checkpoint = True
            series.open_start = start
            for i, value in enumerate(values):
                if value is not None:
                    series.sums[i] += value
                    series.counts[i] += 1

    def forget(self, device_id: str) -> None:
        with self._lock:
            if self._series.pop(device_id, None) is not None:
                self._closed_since_checkpoint = True

    # -- reads ---------------------------------------------------------------------------
    def points(self, device_id: str, since_s: float = DAY_S,
               now: float | None = None) -> list[dict[str, Any]]:
        """The device's points over the last ``since_s`` seconds, oldest first, the open
        bucket last (its mean so far): ``{"t", "rssi", "free_heap"}``, None where not
        reported."""
        now = time.time() if now is None else now
        oldest = now - since_s
        with self._lock:
            series = self._series.get(device_id)
            if series is None:
                return []
            rows = list(zip(series.starts, series.rssi, series.heap, strict=True))
            if series.open_start is not None:
                rows.append((series.open_start, *series.open_means()))
        return [{"t": start, "rssi": None if rssi == MISSING else rssi,
                 "free_heap": None if heap == MISSING else heap}
                for start, rssi, heap in rows if start >= oldest - self.bucket_s]

    def __len__(self) -> int:
        return len(self._series)

    # -- checkpoints ---------------------------------------------------------------------
    def _load(self, data: dict[str, Any]) -> None:
        oldest = time.time() - DAY_S
        for device_id, columns in data.get("devices", {}).items():
            series = Series()
            for start, rssi, heap in zip(*columns, strict=True):
                if start >= oldest:
                    series.starts.append(start)
                    series.rssi.append(rssi)
                    series.heap.append(heap)
            series.trim(int(oldest), self.max_points)
            if series.starts:
                self._series[device_id] = series

    def checkpoint(self, *, closing: bool = False) -> bool:
        """Write the closed buckets if any closed since the last checkpoint (at shutdown
        the open buckets are closed first, so they are kept too). True when it wrote."""
        with self._lock:
            if closing:
                for series in self._series.values():
                    if series.open_start is not None:
                        series.close_bucket()
                        self._closed_since_checkpoint = True
            if not self._closed_since_checkpoint:
                return False
            self._closed_since_checkpoint = False
            devices = list(self._series)

        def points(device_id: str) -> list | None:
            series = self._series.get(device_id)
            return None if series is None else \
                [series.starts.tolist(), series.rssi.tolist(), series.heap.tolist()]

        payload = (f'{{"bucket_s":{json.dumps(self.bucket_s)},"devices":'
                   f'{encode_in_slices(self._lock, devices, points)}}}').encode()
        write_or_retry_later(self.path, payload, self._lock,
                             lambda: setattr(self, "_closed_since_checkpoint", True))
        return True

    def start(self) -> None:
        self._checkpoints.start()

    def stop(self) -> None:
        self._checkpoints.stop()
        self.checkpoint(closing=True)
