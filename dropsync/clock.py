"""Timestamps as the API shows them: ISO 8601 in UTC with millisecond precision."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_from_epoch(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def now_iso() -> str:
    return iso_from_epoch(time.time())
