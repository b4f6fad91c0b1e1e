"""Operating a hub: request log, metrics, trusted proxies, backups, TLS, mDNS, the service.

``init_app`` wires the per-request parts into an app; the rest are called by the CLI
(``dropsync.ops.cli``) and the admin API (``dropsync.api.admin_ops``).
"""

from __future__ import annotations

from flask import Flask

from ..store.snapshot import Snapshotter
from . import requestlog
from .discovery import Advertiser
from .metrics import HubMetrics
from .tls import tls_files


def init_app(app: Flask) -> None:
    hub = app.extensions["dropsync"]
    metrics = app.extensions["dropsync.metrics"] = HubMetrics(hub)
    requestlog.init_app(app, metrics)
    app.extensions["dropsync.snapshots"] = Snapshotter(hub.stores, [hub.packages.write_lock])
    if hub.serving and app.config["MDNS"]:
        advertiser = Advertiser(app.config["HOST"], app.config["PORT"],
                                tls=tls_files(app.config) is not None)
        advertiser.start()
        hub.on_close.append(advertiser.stop)
