"""Prometheus metrics of one hub: requests, latencies, fleet and queue state, disk.

Each app gets its own ``CollectorRegistry`` (tests build many apps in one process, and
the default global registry refuses a second metric of the same name). Per-request work
sits on the poll path, so it is kept to a dict lookup and two ``inc``/``observe`` calls:
the labelled children are cached instead of resolved through ``labels()`` each time.
Fleet, queue and disk figures are read when scraped, never maintained per request.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .. import timings

if TYPE_CHECKING:
    from ..hub import Hub

#: The poll route: its latency gets a histogram of its own.
POLL_ENDPOINT = "device.poll_commands"
#: Routes whose answers are file bytes (counted in bytes_served).
BYTE_ENDPOINTS = frozenset({"files.download", "files.download_chunk",
                            "admin.download_upload"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
SLOW_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class HubStateCollector:
    """Figures read from the hub at scrape time: devices and commands by state, disk."""

    def __init__(self, hub: Hub):
        self.hub = hub

    def collect(self):
        hub = self.hub
        devices = GaugeMetricFamily("dropsync_devices", "Registered devices by connection "
                                    "state (disabled counted apart)", labels=["state"])
        counts = {"online": 0, "overdue": 0, "offline": 0, "disabled": 0}
        for device in hub.stores.devices.all():
            if not device["enabled"]:
                counts["disabled"] += 1
            else:
                counts[hub.pacing.fleet_view(device)["connection"]] += 1
        for state, count in counts.items():
            devices.add_metric([state], count)
        yield devices

        commands = GaugeMetricFamily("dropsync_command_deliveries", "Command deliveries by "
                                     "state (ended: kept in history)", labels=["state"])
        stats = hub.commands.stats()
        for state, key in (("pending", "pending"), ("delivered", "delivered"),
                           ("ended", "ended_in_history")):
            commands.add_metric([state], stats[key])
        yield commands

        rollouts = GaugeMetricFamily("dropsync_rollouts", "Rollouts by state",
                                     labels=["state"])
        for state, count in hub.rollouts.count_by_state().items():
            rollouts.add_metric([state], count)
        yield rollouts

        enrollments = GaugeMetricFamily("dropsync_enrollments", "Boards that enrolled, by "
                                        "state (pending: waiting for an operator)",
                                        labels=["state"])
        for state, count in hub.enrollment.counts().items():
            enrollments.add_metric([state], count)
        yield enrollments

        if hub.alerts is not None:
            webhook = GaugeMetricFamily("dropsync_alert_webhook", "Alerts posted to "
                                        "ALERT_WEBHOOK_URL, by outcome (dropped: the queue "
                                        "was full)", labels=["outcome"])
            for outcome, count in hub.alerts.counts.items():
                webhook.add_metric([outcome], count)
            yield webhook

        yield GaugeMetricFamily("dropsync_disk_free_bytes", "Free bytes on the data "
                                "directory's filesystem",
                                value=shutil.disk_usage(hub.stores.data_dir).free)


class HubMetrics:
    def __init__(self, hub: Hub):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("dropsync_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.poll_latency = Histogram("dropsync_poll_latency_seconds",
                                      "Time to answer a device's command poll",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.bytes_served = Counter("dropsync_bytes_served", "File bytes the hub answered "
                                    "with (nginx-served X-Accel bytes not included)",
                                    ["route"], registry=self.registry)
        self.ingest_latency = Histogram("dropsync_ingest_seconds", "Time to take a staged "
                                        "file into the blob store", buckets=SLOW_BUCKETS,
                                        registry=self.registry)
        self.store_writes = Histogram("dropsync_store_write_seconds", "Durable store writes "
                                      "(atomic table writes, history appends)", ["kind"],
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(HubStateCollector(hub))
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._timing_children = {
            "store_write": self.store_writes.labels("table"),
            "history_append": self.store_writes.labels("history"),
            "ingest": self.ingest_latency,
        }
        timings.listen(self)  # held weakly: this object lives as long as its app

    def __call__(self, kind: str, seconds: float) -> None:
        child = self._timing_children.get(kind)
        if child is not None:
            child.observe(seconds)

    def count_request(self, method: str, route: str, endpoint: str | None, status: int,
                      seconds: float, content_length: int | None) -> None:
        key = (method, route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(method, route,
                                                                       str(status))
        child.inc()
        if endpoint == POLL_ENDPOINT:
            self.poll_latency.observe(seconds)
        elif endpoint in BYTE_ENDPOINTS and content_length and status in (200, 206):
            self.bytes_served.labels(route).inc(content_length)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
