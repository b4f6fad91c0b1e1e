"""The hub sets the pace: how often each device polls, and whether it is keeping up.

Every poll answer carries ``next_poll_s``: the device's own interval if an operator set
one, else the shortest interval among its groups, else ``POLL_INTERVAL_S``; spread by
``POLL_JITTER`` so a fleet rebooted together does not keep polling in step. Operators can
slow or speed a fleet without reflashing it.

A device is ``online``, ``overdue`` or ``offline`` by the time since it was last seen,
measured in its own intervals, so a device told to poll hourly is not "offline" after a
minute.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from ..clock import iso_from_epoch
from ..store import Document, Stores

ONLINE, OVERDUE, OFFLINE = "online", "overdue", "offline"
#: Heartbeat fields with a meaning of their own; anything else is an extra attribute.
HEARTBEAT_FIELDS = ("firmware_version", "uptime_s", "free_heap", "rssi", "ip")


class Pacing:
    def __init__(self, stores: Stores, config: dict[str, Any]):
        self.stores = stores
        self.default_interval_s = config["POLL_INTERVAL_S"]
        self.jitter = config["POLL_JITTER"]
        self.overdue_after = config["OVERDUE_AFTER_INTERVALS"]
        self.offline_after = config["OFFLINE_AFTER_INTERVALS"]

    def interval_s(self, device: Document) -> int:
        """The interval the hub wants from this device, before jitter."""
        own = device.get("poll_interval_s")
        if own:
            return own
        group_intervals = [self.stores.groups.get(g).get("poll_interval_s")
                           for g in device.get("groups", ()) if g in self.stores.groups]
        group_intervals = [i for i in group_intervals if i]
        return min(group_intervals) if group_intervals else self.default_interval_s

    def next_poll_s(self, device: Document) -> int:
        """The interval, spread by the jitter, in whole seconds (node firmware parses an
        integer), rounded up or down at random in proportion to the fraction.

        Plain rounding turned every answer for a 5 s interval's 10% spread into exactly
        5, and a fleet powered up together stayed in step; rounded this way the answers
        are 4, 5 or 6 and average the spread value, so the fleet drifts apart.
        """
        interval = self.interval_s(device)
        spread = interval * self.jitter
        wanted = interval + random.uniform(-spread, spread)
        whole = math.floor(wanted)
        return max(1, whole + (random.random() < wanted - whole))

    def connection(self, device: Document, last_seen: float | None,
                   now: float | None = None) -> str:
        if not last_seen:
            return OFFLINE
        age = (time.time() if now is None else now) - last_seen
        interval = self.interval_s(device)
        if age <= interval * self.overdue_after:
            return ONLINE
        if age <= interval * self.offline_after:
            return OVERDUE
        return OFFLINE

    def fleet_view(self, device: Document) -> Document:
        """A device with what the hub knows of it at run time: liveness, inventory, pace."""
        liveness = self.stores.liveness.get(device["id"])
        last_seen = liveness.get("last_seen")
        return {
            **device,
            "last_seen": iso_from_epoch(last_seen) if last_seen else None,
            "address": liveness.get("ip"),
            "connection": self.connection(device, last_seen),
            "effective_poll_interval_s": self.interval_s(device),
            "inventory": {**liveness.get("attributes", {}),
                          **{k: liveness[k] for k in HEARTBEAT_FIELDS if k in liveness
                             and k != "ip"},
                          **({"reported_ip": liveness["reported_ip"]}
                             if "reported_ip" in liveness else {})},
            "heartbeat_at": iso_from_epoch(liveness["heartbeat_at"])
            if liveness.get("heartbeat_at") else None,
        }


def health_bucket_end(stores: Stores, now: float) -> float:
    """When the health series' current bucket closes: a chart that ends there moves when a
    bucket closes or a point comes, never with the clock alone."""
    bucket_s = stores.health.bucket_s
    return -(-now // bucket_s) * bucket_s


def health_points(stores: Stores, device_id: str, now: float) -> list[dict[str, Any]]:
    """A device's RSSI and free-heap series (the last 24 hours), oldest first."""
    return stores.health.points(device_id, now=now)


def record_heartbeat(stores: Stores, device_id: str, report: dict[str, Any]) -> None:
    """Keep a heartbeat in memory (checkpointed by liveness), never a store write per beat:
    an SD card would not survive a fleet's heartbeats."""
    known = {k: report[k] for k in HEARTBEAT_FIELDS if report.get(k) is not None}
    if "ip" in known:  # what the device says; the address we saw it from is "ip"
        known["reported_ip"] = known.pop("ip")
    extra = report.get("attributes") or {}
    merged = {**stores.liveness.get(device_id).get("attributes", {}), **extra}
    if not extra.get("queued"):
        # "queued" marks one report, sent late from a node's outbox; a later live
        # heartbeat says nothing of it, and the device is not queuing any more.
        merged.pop("queued", None)
    stores.liveness.update(device_id, heartbeat_at=time.time(), attributes=merged, **known)
    stores.health.record(device_id, rssi=report.get("rssi"), free_heap=report.get("free_heap"))
