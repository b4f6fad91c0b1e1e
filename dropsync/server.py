"""Serving the hub with gunicorn: one worker with threads, as DESIGN.md requires.

One worker, because the hub keeps its stores in memory and holds the data directory
exclusively; threads (gthread) give it concurrency. The app is created in the worker, never
preloaded in the master, so the worker is the process that holds the data-directory lock.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Mapping
from typing import Any

from gunicorn.app.base import BaseApplication

from .errors import StartupError

#: gunicorn's exit code for "worker failed to boot": the master stops instead of respawning.
WORKER_BOOT_ERROR = 3


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def announce_address(host: str, port: int, scheme: str = "http"):
    """A gunicorn ``when_ready`` hook that says where the hub listens."""
    def when_ready(server) -> None:
        everywhere = host in ("0.0.0.0", "::", "")
        lan = f" (ESP nodes on the LAN: {scheme}://{socket.gethostname()}:{port})" \
            if everywhere else ""
        server.log.info("DropSync hub listening on %s://%s%s", scheme,
                        bind_address(host, port), lan)
    return when_ready


def worker_exit(server, worker) -> None:
    """Checkpoint liveness and release the data directory as the worker stops."""
    app = getattr(worker, "wsgi", None)
    hub = getattr(app, "extensions", {}).get("dropsync") if app is not None else None
    if hub is not None:
        hub.close()


def gunicorn_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    from .ops.tls import tls_files

    tls = tls_files(settings)  # HTTPS when `dropsync tls init` made a certificate
    return {
        **({"certfile": str(tls[0]), "keyfile": str(tls[1])} if tls else {}),
        "bind": [bind_address(settings["HOST"], settings["PORT"])],
        "workers": 1,
        "worker_class": "gthread",
        "threads": settings["THREADS"],
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        "preload_app": False,
        # gunicornc could add workers at run time, and a shared default socket path would
        # clash between two hubs on one machine; the hub must stay one worker.
        "control_socket_disable": True,
        "errorlog": "-",
        "loglevel": settings["LOG_LEVEL"].lower(),
        "when_ready": announce_address(settings["HOST"], settings["PORT"],
                                       "https" if tls else "http"),
        "worker_exit": worker_exit,
    }


class HubServer(BaseApplication):
    def __init__(self, overrides: Mapping[str, Any], settings: Mapping[str, Any]):
        self.overrides = dict(overrides)
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self):
        return create_app_or_exit(self.overrides)


def create_app_or_exit(overrides: Mapping[str, Any] | None = None):
    """The app, or a clear message and gunicorn's boot-error exit instead of a traceback."""
    from . import create_app

    try:
        return create_app(overrides)
    except StartupError as exc:
        logging.getLogger("dropsync").error("%s", exc.message)
        sys.exit(WORKER_BOOT_ERROR)
