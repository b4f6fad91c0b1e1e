"""Timestamps as the API shows them: ISO 8601 in UTC with millisecond precision."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_from_epoch(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def now_iso() -> str:
    return iso_from_epoch(time.time())


def unix_seconds(moment: str | float | None) -> int | None:
    """A moment (ISO 8601 as stored, or epoch seconds) as whole Unix seconds: the one way
    every device-facing answer gives a time (a node has no time zone database, and
    parses an integer in a few bytes of code)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    return int(moment)
