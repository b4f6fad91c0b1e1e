"""Alerts to a local webhook: devices going offline and failed deliveries.

With ``ALERT_WEBHOOK_URL`` set (an http(s) URL on the LAN or loopback: the hub has no
internet and must not be pointed at one), each alert is POSTed as JSON
``{"kind", "device_id", "at", ...}`` from a thread of its own, with a bounded queue:
a request never waits for the webhook, a webhook that is down is retried with backoff,
and when the queue is full the oldest alert is dropped (counted in ``/metrics``).

``OfflineWatch`` turns the fleet's connection, which is computed when asked, into
``device.offline`` alerts: every ``interval_s`` it compares each device with what it was
at the last look, and says so once per fall.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..clock import now_iso

log = logging.getLogger(__name__)

#: Alerts waiting to be sent; past it the oldest is dropped.
QUEUE_MAX = 1000
#: Tries per alert (waits of 1, 2, 4, 8 s between them), each bounded in time.
TRIES, TIMEOUT_S = 5, 5.0
LAN_SUFFIXES = (".local", ".lan", ".home.arpa", ".internal")


def lan_url_problem(url: str) -> str | None:
    """Why ``url`` is not an http(s) URL on the LAN or loopback, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "use an http:// or https:// URL"
    host = parts.hostname
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if "." in host and not host.endswith(LAN_SUFFIXES):
            return f"{host} is not a LAN name (a single label, or .local, .lan, .home.arpa)"
        return None
    if not (address.is_private or address.is_loopback or address.is_link_local):
        return f"{host} is not a LAN or loopback address"
    return None


class Webhook:
    """POST each alert to ``url`` from a thread of its own; never blocks the caller."""

    def __init__(self, url: str, queue_max: int = QUEUE_MAX, tries: int = TRIES,
                 timeout_s: float = TIMEOUT_S, first_wait_s: float = 1.0):
        self.url, self.tries, self.timeout_s = url, tries, timeout_s
        self.first_wait_s = first_wait_s
        self.queue: deque[dict[str, Any]] = deque(maxlen=queue_max)
        self.counts = {"sent": 0, "failed": 0, "dropped": 0}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1)

    def send(self, kind: str, **fields: Any) -> None:
        alert = {"kind": kind, "at": now_iso(), **fields}
        with self._wake:
            if len(self.queue) == self.queue.maxlen:
                self.counts["dropped"] += 1  # deque drops the oldest as the new one goes in
            self.queue.append(alert)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self.queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                alert = self.queue.popleft()
            self._deliver(alert)

    def _deliver(self, alert: dict[str, Any]) -> None:
        body = json.dumps(alert).encode()
        wait = self.first_wait_s
        for attempt in range(1, self.tries + 1):
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "User-Agent": "dropsync-alerts"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                    if answer.status < 300:
                        self.counts["sent"] += 1
                        return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                log.info("alert webhook: try %d of %d failed: %s", attempt, self.tries, exc)
            with self._wake:
                if self._stopping:
                    return
                self._wake.wait(wait)  # a stop ends the wait at once
            wait *= 2
        self.counts["failed"] += 1
        log.warning("alert webhook: gave up on %s for %s", alert["kind"],
                    alert.get("device_id"))


class OfflineWatch:
    """``device.offline`` once per fall from online or overdue to offline."""

    def __init__(self, states: Callable[[], dict[str, str]], alert: Callable[..., None]):
        self.states, self.alert = states, alert
        self._last: dict[str, str] | None = None

    def look(self) -> None:
        now = self.states()
        if self._last is not None:  # the first look only learns the fleet
            for device_id, state in now.items():
                if state == "offline" and self._last.get(device_id, "offline") != "offline":
                    self.alert("device.offline", device_id=device_id,
                               was=self._last[device_id])
        self._last = now


def fleet_states(hub: Any) -> dict[str, str]:
    """Each enabled device's connection now."""
    now = time.time()
    return {d["id"]: hub.pacing.connection(d, hub.stores.liveness.get(d["id"])
                                           .get("last_seen"), now)
            for d in hub.stores.devices.all() if d["enabled"]}
