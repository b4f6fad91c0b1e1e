"""What the dashboard's pages show, computed from the hub's services.

No Flask request in here: the same functions feed a page, its live refresh and the
benchmark. Fleet-wide figures (every device's connection, every package's progress) are
computed at most once every ``REFRESH_S`` and shared by every open page, so ten open
dashboards cost what one does.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..fleet.devices import find_events, get_device, list_devices
from ..fleet.messages import query_messages
from ..fleet.pacing import health_bucket_end, health_points
from ..sync.packages import HOLDING_STATES, device_status
from . import charts

if TYPE_CHECKING:
    from ..hub import Hub

#: Seconds a fleet-wide figure is reused; the pages refresh every 2.5 s.
REFRESH_S = 2.0
PAGE_SIZE = 50
#: Ended command deliveries the overview looks through for failures.
RECENT_COMMANDS = 200
#: Events one activity page looks through for matches before offering "older".
ACTIVITY_SCAN = 20_000
DEVICE_STATES = ("online", "overdue", "offline", "disabled")
#: What the firmware breakdown and filter call a device that never reported a version.
UNKNOWN_FIRMWARE = "unknown"
#: Rollout states the overview shows.
ROLLOUTS_UNDER_WAY = ("scheduled", "running", "paused")


class Recent:
    """Values recomputed at most every ``ttl_s`` seconds; a few keys, oldest dropped."""

    def __init__(self, ttl_s: float = REFRESH_S, max_entries: int = 32):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._values: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.RLock()  # the overview's figures are built from the fleet's

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:  # one computation at a time: the others wait and share it
            found = self._values.get(key)
            if found is not None and time.monotonic() - found[0] < self.ttl_s:
                return found[1]
            value = compute()
            self._values[key] = (time.monotonic(), value)
            self._values.move_to_end(key)
            while len(self._values) > self.max_entries:
                self._values.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


#: Each hub's figures, kept as long as the hub is (the dashboard's own, not the hub's).
_RECENT: weakref.WeakKeyDictionary[Hub, Recent] = weakref.WeakKeyDictionary()
_RECENT_LOCK = threading.Lock()


def recent(hub: Hub) -> Recent:
    with _RECENT_LOCK:
        cache = _RECENT.get(hub)
        if cache is None:
            cache = _RECENT[hub] = Recent()
        return cache


# -- the fleet -------------------------------------------------------------------------
def fleet(hub: Hub) -> list[dict[str, Any]]:
    """Every device as operators see it (liveness, inventory, sync), sorted by id."""
    def compute() -> list[dict[str, Any]]:
        devices = list_devices(hub.stores)
        reports = hub.packages.reports_by_package()
        catalog = hub.packages.catalog
        views = []
        for device in devices:
            view = hub.pacing.fleet_view(device)
            view["state"] = view["connection"] if device["enabled"] else "disabled"
            view["sync"] = sync_summary(hub.packages.offered(device, catalog).values(),
                                        reports, device["id"])
            views.append(view)
        return views
    return recent(hub).get("fleet", compute)


def sync_summary(packages, reports: dict, device_id: str) -> dict[str, int]:
    """How far one device is with the files it should hold."""
    files = have = percent = 0
    for package in packages:
        status = device_status(package, reports.get(package["id"], {}).get(device_id))
        files += 1
        have += status["state"] in HOLDING_STATES
        percent += status["percent"]
    return {"files": files, "have": have, "percent": round(percent / files) if files else 100}


#: The overview lists devices that went offline within this long.
OFFLINE_ALERT_S = 3600


def went_offline(views: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Devices that were seen in the last hour but are offline now, most recent first."""
    found = [v for v in views if v["state"] == "offline" and v["last_seen"]
             and now - epoch_of(v["last_seen"]) <= OFFLINE_ALERT_S]
    return sorted(found, key=lambda v: v["last_seen"], reverse=True)


def fleet_counts(views: list[dict[str, Any]]) -> dict[str, int]:
    counts = {state: 0 for state in DEVICE_STATES}
    for view in views:
        counts[view["state"]] += 1
    counts["total"] = len(views)
    return counts


def firmware_of(view: dict[str, Any]) -> str:
    """The firmware version a device last reported, or ``unknown``."""
    return str(view["inventory"].get("firmware_version") or UNKNOWN_FIRMWARE)


def firmware_breakdown(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How many devices run each firmware version, the most common first."""
    counts: dict[str, int] = {}
    for view in views:
        counts[firmware_of(view)] = counts.get(firmware_of(view), 0) + 1
    total = len(views) or 1
    return [{"version": version, "count": count, "percent": round(100 * count / total)}
            for version, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


#: What the devices list sorts by: a column's name -> the value it compares.
SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "id": lambda v: v["id"],
    "state": lambda v: v["state"],
    "last_seen": lambda v: v["last_seen"],
    "rssi": lambda v: v["inventory"].get("rssi"),
    "free_heap": lambda v: v["inventory"].get("free_heap"),
    "firmware": lambda v: v["inventory"].get("firmware_version"),
}


def sorted_devices(found: list[dict[str, Any]], sort: str, order: str) -> list[dict[str, Any]]:
    """By a column, ascending or descending; devices with no value come last either way,
    then by id."""
    key = SORT_KEYS.get(sort, SORT_KEYS["id"])
    known = [v for v in found if key(v) is not None]
    unknown = [v for v in found if key(v) is None]
    known.sort(key=lambda v: (key(v), v["id"]), reverse=order == "desc")
    return known + sorted(unknown, key=lambda v: v["id"])


def find_devices(views: list[dict[str, Any]], query: str = "", state: str = "",
                 page: int = 1, per_page: int = PAGE_SIZE,
                 firmware: str = "", sort: str = "id", order: str = "asc") -> dict[str, Any]:
    """One page of devices matching a search (id, name or group), a state and a firmware
    version, sorted by a column."""
    needle = query.strip().lower()
    found = [v for v in views
             if (not state or v["state"] == state)
             and (not firmware or firmware_of(v) == firmware)
             and (not needle or needle in v["id"].lower() or needle in v["name"].lower()
                  or any(needle in g.lower() for g in v.get("groups", ())))]
    found = sorted_devices(found, sort, order)
    pages = max(1, -(-len(found) // per_page))
    page = min(max(1, page), pages)
    return {"devices": found[(page - 1) * per_page:page * per_page], "total": len(found),
            "page": page, "pages": pages, "matching": [v["id"] for v in found]}


# -- overview --------------------------------------------------------------------------
def overview(hub: Hub) -> dict[str, Any]:
    def compute() -> dict[str, Any]:
        views = fleet(hub)
        packages = package_progress(hub)
        ended = hub.commands.recently_ended(RECENT_COMMANDS)
        failed = [r for r in ended if r.get("state") == "failed"]  # as failures() does
        disk = shutil.disk_usage(hub.stores.data_dir)
        blobs = {p["sha256"]: p["size"] for p in packages}
        uploads = hub.uploads.list()
        return {
            "fleet": fleet_counts(views),
            "commands": hub.commands.stats(),
            "failed": {"count": len(failed), "of": len(ended), "latest": failed[:5]},
            "packages": packages,
            "storage": {"total": disk.total, "used": disk.used, "free": disk.free,
                        "packages": sum(blobs.values()),
                        "uploads": sum(u.get("size", 0) for u in uploads)},
            "staging": hub.staging_report(),
            "activity": find_events(hub.stores, limit=8)["events"],
            "pending_boards": hub.enrollment.pending_count(),
            "went_offline": went_offline(views, time.time()),
            "rollouts": [r for r in hub.rollouts.list() if r["state"] in ROLLOUTS_UNDER_WAY],
            "firmware": firmware_breakdown(views),
        }
    return recent(hub).get("overview", compute)


def failures(hub: Hub, limit: int = RECENT_COMMANDS) -> list[dict[str, Any]]:
    """Failed deliveries among the latest ended, newest first: by the device (with its
    error and result) or by the hub (the lease ran out too often: "timeout")."""
    return [r for r in hub.commands.recently_ended(limit) if r.get("state") == "failed"]


def result_text(result: Any, limit: int = 200) -> str:
    """A delivery's result as one line of JSON, cut to ``limit`` characters."""
    if result in (None, {}, []):
        return ""
    text = json.dumps(result, separators=(", ", ": "), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def package_progress(hub: Hub, package_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Packages with how many of their target devices hold them, and each device's state."""
    def compute() -> list[dict[str, Any]]:
        catalog = hub.packages
        packages = catalog.list_packages()
        # The fleet's views are the devices (id, groups) already copied out of the store.
        status = catalog.status(fleet(hub), [p["id"] for p in packages])
        result = []
        for package in packages:
            counts = status[package["id"]]
            targets = counts["targets"]
            result.append({**package, "targets": targets, "have": counts["have"],
                           "downloading": counts["downloading"], "failed": counts["failed"],
                           "percent": round(sum(d["percent"] for d in counts["devices"])
                                            / targets) if targets else 0,
                           "devices": sorted(counts["devices"],
                                             key=lambda d: d["device_id"])})
        return result
    found = recent(hub).get("packages", compute)
    if package_ids is not None:
        found = [p for p in found if p["id"] in package_ids]
    return found


# -- one device ------------------------------------------------------------------------
def device_detail(hub: Hub, device_id: str, level: str | None = None) -> dict[str, Any]:
    """Everything the device page shows (a missing device raises NotFound)."""
    device = get_device(hub.stores, device_id)
    view = hub.pacing.fleet_view(device)
    reports = hub.packages.reports_by_package()
    files = []
    for package in sorted(hub.packages.offered(device).values(),
                          key=lambda p: p["path"]):
        files.append({**package, **device_status(
            package, reports.get(package["id"], {}).get(device_id))})
    now = time.time()
    series = health_points(hub.stores, device_id, now)
    chart_end = health_bucket_end(hub.stores, now)  # not this second: a refresh can 304
    return {
        "device": view,
        "commands": hub.commands.device_commands(device_id, limit=20)["commands"],
        "messages": query_messages(hub.stores, device_id=device_id, level=level or None,
                                   limit=20)["messages"],
        "uploads": hub.uploads.list(device_id),
        "files": files,
        "sync_history": hub.packages.sync_history(device_id, 20),
        "charts": [
            charts.line_chart(series, "rssi", title="Signal (RSSI)", unit="dBm",
                              now=chart_end, min_range=10),
            charts.line_chart(series, "free_heap", title="Free heap", unit="KiB",
                              now=chart_end, scale=1024, min_range=4),
        ],
        "series_points": len(series),
        "refused": hub.refused_tokens.of(device_id),
    }


# -- activity --------------------------------------------------------------------------
def activity(hub: Hub, *, kind: str = "", device: str = "", before: int | None = None,
             limit: int = PAGE_SIZE) -> dict[str, Any]:
    """A page of the event log, newest first, by kind prefix and device. A filtered page
    looks through at most ``ACTIVITY_SCAN`` events, so a rare match cannot make one
    request read the whole history; "older" continues where it stopped."""
    return find_events(hub.stores, kind=kind, device=device, before=before, limit=limit,
                       scan=ACTIVITY_SCAN)


# -- formatting (Jinja filters) ----------------------------------------------------------
def epoch_of(moment: str | float) -> float:
    if isinstance(moment, str):
        return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    return float(moment)


def iso_time(moment: str | float) -> str:
    """The moment as ISO 8601 in UTC, for ``<time datetime>``: the browser draws "12 s ago"
    from it, so a page's HTML changes only when its data does (and a refresh can 304)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_of(moment)))


def local_time(moment: str | float) -> str:
    """The moment as the hub's local date and time (its zone: ``hub_zone``)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_of(moment)))


def hub_zone() -> str:
    """The hub's time zone, as the pages name it beside local times."""
    return time.strftime("%Z") or "UTC"


def duration(seconds: float | None) -> str:
    """"45 s", "5 min", "2 h", "1 d 6 h": a soak time or a deadline."""
    if not isinstance(seconds, int | float):
        return "–"
    seconds = int(seconds)
    for unit, step, smaller, small_step in (("d", 86_400, "h", 3_600), ("h", 3_600, "min", 60)):
        if seconds >= step:
            rest = (seconds % step) // small_step
            return f"{seconds // step} {unit}" + (f" {rest} {smaller}" if rest else "")
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def size(value: float | None) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
