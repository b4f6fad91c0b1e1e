"""Device logs: what a node says, kept in the ``messages`` history and queried by device,
level and time, newest first, a page at a time. Old messages age out by
``HISTORY_RETENTION``."""

from __future__ import annotations

import time
from typing import Any

from ..clock import iso_from_epoch
from ..jsonbounds import check_json_size
from ..store import Document, Stores

LEVELS = ("debug", "info", "warning", "error", "critical")


def record_message(stores: Stores, device_id: str, *, level: str, text: str,
                   data: Any, device_time: Any,
                   data_max_bytes: int) -> Document:
    """Store one message durably; the hub's receive time is kept beside the device's own
    (a node without a clock source may send uptime, or nothing). ``data`` is bounded
    (``MESSAGE_DATA_MAX_BYTES``) as command args are: up to the request limit, a token
    could add 600 MB of history a minute and make the messages page as large."""
    check_json_size(data, data_max_bytes, "data")
    now = time.time()
    return stores.history["messages"].append({
        "device_id": device_id, "level": level, "text": text, "data": data,
        "device_time": device_time, "received_at": iso_from_epoch(now), "received": now,
    })


def query_messages(stores: Stores, *, device_id: str | None = None,
                   level: str | None = None, since: float | None = None,
                   until: float | None = None, before_seq: int | None = None,
                   after_seq: int | None = None, limit: int = 50) -> dict:
    """A page of messages, newest first; ``next_before`` continues the page.

    The index narrows by device and level; the hub's receive time rises with the sequence
    number, so ``since`` is a binary search and ``until`` a cursor, never a scan."""
    log = stores.history["messages"]
    if device_id and level:
        key: str | None = f"device:{device_id}/level:{level}"
    elif device_id:
        key = f"device:{device_id}"
    elif level:
        key = f"level:{level}"
    else:
        key = None
    if since is not None:
        first = log.first_seq_at_or_after(key, "received", since) - 1
        after_seq = first if after_seq is None else max(after_seq, first)
    if until is not None:
        first_after_until = log.first_seq_at_or_after(key, "received", until + 1e-6)
        before_seq = first_after_until if before_seq is None \
            else min(before_seq, first_after_until)
    page = log.find(key, before_seq=before_seq, after_seq=after_seq, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return {"messages": page, "count": len(page),
            "next_before": page[-1]["seq"] if more else None}
