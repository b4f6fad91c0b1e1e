"""Wiring the operations parts into one app: request log and metrics, trusted proxies,
backup snapshots, mDNS while serving."""

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
