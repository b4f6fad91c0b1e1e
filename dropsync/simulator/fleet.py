"""A fleet of virtual devices in one asyncio loop: registration, start, progress, summary.

Devices are registered through the admin API in batches (``devices/import`` with tokens
the simulator makes, then ``groups/<name>/members``), or read from a ``{id: token}`` file
of devices already registered. Against a hub on loopback each device gets its own source
address (127.1.x.y), as real nodes have their own IPs: the hub's per-address limits (a
wrong token counts against its address) then see one device, not the whole fleet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import resource
import secrets
import signal
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from ..hubclient import HubError
from .device import HEARTBEAT_EVERY_S, MANIFEST_EVERY_S, HubLink, VirtualDevice
from .faults import FaultPlan
from .stats import FleetStats

#: Devices per ``devices/import`` request (bodies stay well under MAX_REQUEST_BYTES).
IMPORT_BATCH = 500
#: Devices per ``groups/<name>/members`` request (the route takes at most 1,000).
MEMBERS_BATCH = 1000


@dataclass
class FleetOptions:
    devices: int = 10
    prefix: str = "sim-"
    groups: tuple[str, ...] = ()
    device_type: str = "esp8266"
    start: str = "staggered"            # or "together": a site after a power cut
    ramp_s: float = 10.0                # staggered devices come up over this long
    duration_s: float | None = None     # None: until stopped
    warmup_s: float = 0.0               # latencies before this are not summarised
    faults: FaultPlan = field(default_factory=FaultPlan)
    request_timeout_s: float = 30.0
    heartbeat_every_s: float = HEARTBEAT_EVERY_S
    manifest_every_s: float = MANIFEST_EVERY_S
    seed: int | None = None
    #: Give each device its own loopback source address (None: when the hub is on an
    #: IPv4 loopback address).
    own_addresses: bool | None = None
    #: Start unenrolled: each device enrolls with this key, waits for an operator (or a
    #: preauthorised MAC), claims its token and carries on (None: registered up front).
    enroll_key: str | None = None


class AdminAPI:
    """The hub's admin API over aiohttp (registration and group membership)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str):
        self.session, self.url, self.token = session, url.rstrip("/"), token

    async def request(self, method: str, path: str, body: Any = None,
                      data: bytes | None = None) -> Any:
        """JSON ``body`` (or raw ``data``) to an admin route; the answer, or HubError."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        async with self.session.request(
                method, f"{self.url}/api/v1/admin{path}", json=body, data=data,
                headers=headers) as response:
            payload = await response.json(content_type=None)
            if response.status >= 400:
                error = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
                raise HubError(response.status, error.get("code", "error"),
                               error.get("message", f"HTTP {response.status}"),
                               error.get("details"))
            return payload


def device_ids(prefix: str, count: int) -> list[str]:
    width = max(4, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def group_of(index: int, groups: tuple[str, ...]) -> str | None:
    """Devices are dealt to the groups in turn."""
    return groups[index % len(groups)] if groups else None


async def register(admin: AdminAPI, ids: list[str], groups: tuple[str, ...]) \
        -> dict[str, str]:
    """Register (or re-key) ``ids`` with fresh tokens and put them in ``groups`` in turn."""
    tokens = {device_id: secrets.token_urlsafe(24) for device_id in ids}
    for start in range(0, len(ids), IMPORT_BATCH):
        batch = {i: tokens[i] for i in ids[start:start + IMPORT_BATCH]}
        await admin.request("POST", "/devices/import", {"tokens": batch})
    await join_groups(admin, ids, groups)
    return tokens


async def join_groups(admin: AdminAPI, ids: list[str], groups: tuple[str, ...]) -> None:
    for group in groups:
        members = [d for i, d in enumerate(ids) if group_of(i, groups) == group]
        for start in range(0, len(members), MEMBERS_BATCH):
            await admin.request("POST", f"/groups/{quote(group, safe='')}/members",
                                {"devices": members[start:start + MEMBERS_BATCH]})


def loopback_addresses(hub_host: str, count: int, wanted: bool | None) -> list[str | None]:
    """A source address per device (127.1.x.y), or None each when not on loopback."""
    try:
        on_loopback = ipaddress.ip_address(hub_host).version == 4 and \
            ipaddress.ip_address(hub_host).is_loopback
    except ValueError:
        on_loopback = False
    if not (on_loopback if wanted is None else wanted):
        return [None] * count
    return [f"127.1.{(i // 250) % 256}.{i % 250 + 1}" for i in range(count)]


def raise_open_files_limit() -> None:
    """Each device holds a socket: lift the soft limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Fleet:
    def __init__(self, hub_url: str, credentials: dict[str, str], options: FleetOptions):
        parts = urlsplit(hub_url)
        self.url = hub_url.rstrip("/")
        self.options = options
        self.stats = FleetStats(warmup_s=options.warmup_s)
        self.link = HubLink(self.url, parts.hostname or "127.0.0.1",
                            parts.port or (443 if parts.scheme == "https" else 80),
                            self.stats, options.faults, options.request_timeout_s,
                            heartbeat_every_s=options.heartbeat_every_s,
                            manifest_every_s=options.manifest_every_s)
        addresses = loopback_addresses(self.link.host, len(credentials),
                                       options.own_addresses)
        self.link.shared_address = addresses[0] is None if addresses else True
        seed = options.seed if options.seed is not None else secrets.randbits(32)
        self.rng = random.Random(seed)
        types = options.device_type
        self.devices = [VirtualDevice(self.link, device_id, token, seed=seed + i,
                                      source_address=addresses[i], device_type=types,
                                      enroll_key=options.enroll_key)
                        for i, (device_id, token) in enumerate(credentials.items())]
        self.stop = asyncio.Event()

    def start_delays(self) -> list[float]:
        if self.options.start == "together":
            return [0.0] * len(self.devices)
        return [self.rng.uniform(0, self.options.ramp_s) for _ in self.devices]

    async def run(self, progress: Callable[[str], None] | None = None,
                  progress_every_s: float = 10.0,
                  stop_on_signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) \
            -> dict[str, Any]:
        """Run until the duration passes or a signal (or ``self.stop``) ends it; the
        summary."""
        raise_open_files_limit()
        loop = asyncio.get_running_loop()
        for signum in stop_on_signals:
            loop.add_signal_handler(signum, self.stop.set)
        self.stats.started = time.monotonic()
        cpu_started = time.process_time()
        tasks = [asyncio.create_task(self.run_device(device, delay))
                 for device, delay in zip(self.devices, self.start_delays(), strict=True)]
        helpers = [asyncio.create_task(self.watch_loop_lag())]
        if progress:
            helpers.append(asyncio.create_task(self.report_progress(progress,
                                                                    progress_every_s)))
        try:
            await asyncio.wait_for(self.stop.wait(), self.options.duration_s)
        except TimeoutError:
            pass
        finally:
            self.stats.online_at_end = len(self.stats.online)
            for signum in stop_on_signals:
                loop.remove_signal_handler(signum)
            for task in [*tasks, *helpers]:
                task.cancel()
            await asyncio.gather(*tasks, *helpers, return_exceptions=True)
        summary = self.summary()
        # The simulator's own cost, to tell its limits from the hub's.
        summary["simulator_cpu_s"] = round(time.process_time() - cpu_started, 2)
        return summary

    async def run_device(self, device: VirtualDevice, delay: float) -> None:
        try:
            await device.run(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a simulator bug must not pass for a quiet device
            self.stats.error("simulator", f"{device.id}: {exc!r}")

    async def watch_loop_lag(self, every_s: float = 0.1) -> None:
        """How late the event loop wakes up: when the simulator itself is short of CPU,
        its latencies include this lag, not only the hub's."""
        while True:
            asked = time.monotonic()
            await asyncio.sleep(every_s)
            self.stats.loop_lag_ms.append((time.monotonic() - asked - every_s) * 1000)

    async def report_progress(self, progress: Callable[[str], None], every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            progress(self.stats.progress_line(len(self.devices)))

    def summary(self) -> dict[str, Any]:
        intervals = [d.interval_s for d in self.devices if d.interval_s]
        interval = statistics.median(intervals) if intervals else None
        summary = self.stats.summary(len(self.devices), interval)
        summary.update(hub=self.url, start=self.options.start,
                       fault_plan=dict(self.options.faults.rates),
                       poll_interval_s=interval)
        return summary


async def prepare_credentials(hub_url: str, admin_token: str | None,
                              options: FleetOptions, tokens: dict[str, str] | None) \
        -> dict[str, str]:
    """The fleet's ``{id: token}``: the given tokens, or new registrations; with an
    enrollment key, name hints with no token yet (the devices enroll)."""
    if options.enroll_key is not None:
        return dict.fromkeys(device_ids(options.prefix, options.devices))
    if tokens is not None and not options.groups:
        return tokens
    if admin_token is None:
        raise HubError(401, "no_admin_token", "registering devices needs an admin token: "
                       "give --admin-token (or DROPSYNC_ADMIN_TOKEN), or --tokens FILE")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        admin = AdminAPI(session, hub_url, admin_token)
        if tokens is not None:
            await join_groups(admin, list(tokens), options.groups)
            return tokens
        return await register(admin, device_ids(options.prefix, options.devices),
                              options.groups)


def load_tokens(text: str, limit: int | None = None) -> dict[str, str]:
    """A seed-style ``{"device id": "token"}`` map (the first ``limit`` entries)."""
    found = json.loads(text)
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise ValueError('expected a JSON object of "device id": "token"')
    items = list(found.items())
    return dict(items[:limit] if limit else items)
